"""`sound-cnn` (the aiSFX CNN) against the aisfx package's own network, and end to end against
the package's Essentia-based embeddings of real Asterisk prompts (tests/data/
sound_cnn_reference.npz, made by scripts/make_sound_reference.py); `sound-cnn-tiny`'s contract.

The package and the prompts are installed by `make setup`, so nothing here is skipped.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.data.audio import read_audio
from mmfuse.encoders import EncoderError, available, build, sound_cnn
from mmfuse.encoders.sound_cnn import (
    SPEC_MAX,
    aisfx_checkpoint,
    block_count,
    load_aisfx_weights,
    spectrogram_blocks,
)
from mmfuse.features.sample import SampleLoader
from mmfuse.features.sfx_mel import frame_count, log_mel_frames

SOUNDS = Path("/usr/share/asterisk/sounds")
REFERENCE = Path(__file__).parent / "data" / "sound_cnn_reference.npz"
SHORT_CLIP = SOUNDS / "en_US_f_Allison" / "ascending-2tone.wav"  # 0.2 s


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def waves(reference) -> list[torch.Tensor]:
    """The fixture's clips at 44.1 kHz, read as every mmfuse loader reads audio."""
    return [read_audio(SOUNDS / clip, sample_rate=44100)[0] for clip in reference["clips"]]


@pytest.fixture(scope="module")
def encoder():
    return build("audio", "sound-cnn").eval()


def package_network():
    from aisfx.models.cnn2d import EmbeddingNet

    net = EmbeddingNet("max", 3, 1, 64)  # as aisfx.inference.load_bestModel builds it
    net.load_state_dict(load_aisfx_weights(), strict=True)
    return net.eval()


def blocks_of(wave: torch.Tensor) -> torch.Tensor:  # N → K×100×96
    return spectrogram_blocks(log_mel_frames(wave[None]) / SPEC_MAX)[0]


def test_waveforms_are_those_the_reference_was_made_from(reference, waves):
    # A resampler that changed would change the embeddings for reasons outside the encoder.
    for i, wave in enumerate(waves):
        w = wave.double().numpy()
        assert len(w) == reference["samples"][i]
        np.testing.assert_allclose(np.abs(w).sum(), reference["abs_sum"][i], rtol=1e-9)
        np.testing.assert_allclose(np.square(w).sum(), reference["square_sum"][i], rtol=1e-9)


def test_front_end_matches_essentia(reference, waves):
    spec = log_mel_frames(waves[0][None])[0]  # T×96
    assert spec.shape == reference["spec0"].shape
    assert spec.shape[0] == frame_count(len(waves[0]))
    np.testing.assert_allclose(spec.numpy(), reference["spec0"], rtol=0, atol=1e-4)


def test_network_matches_the_package_network(reference, waves, encoder):
    # The last block of each clip, and a block of Essentia's own spectrogram: 4×100×96.
    essentia = torch.from_numpy(reference["spec0"])[None] / SPEC_MAX
    blocks = torch.stack([blocks_of(w)[-1] for w in waves] + [spectrogram_blocks(essentia)[0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            encoder.net(blocks), package_network()(blocks), rtol=0, atol=1e-5
        )


def test_embeddings_match_the_package_reference(reference, waves, encoder):
    # Through the loader: each clip read, resampled and zero-padded to the encoder's duration.
    loader = SampleLoader({"sound": "audio"}, {"sound": encoder.input_spec})
    batch = torch.stack([loader.load("sound", SOUNDS / c) for c in reference["clips"]])
    assert batch.shape == (3, round(encoder.input_spec.duration * 44100))
    with torch.no_grad():
        clips = encoder(batch)  # 3×512
        for i, wave in enumerate(waves):
            blocks = reference[f"emb{i}"]  # K×512, the package's per-block embeddings
            tokens = encoder.forward_tokens(wave[None])[0]
            np.testing.assert_allclose(tokens.numpy(), blocks, rtol=0, atol=1e-4)
            np.testing.assert_allclose(clips[i].numpy(), blocks.mean(0), rtol=0, atol=1e-4)
    assert [reference[f"emb{i}"].shape[0] for i in range(3)] == [1, 2, 3]


def test_short_clip_gives_one_padded_block(encoder):
    from aisfx.preprocessing import blocking

    wave = read_audio(SHORT_CLIP, sample_rate=44100)[0]
    with torch.no_grad():
        tokens = encoder.forward_tokens(wave[None])
        clip = encoder(wave[None])
        assert tokens.shape == (1, 1, 512) and clip.shape == (1, 512)
        assert torch.isfinite(clip).all() and clip.abs().sum() > 0
        torch.testing.assert_close(clip, tokens[:, 0])
        # The package's own blocking pads the same single block (its embedding call asserts).
        spec = log_mel_frames(wave[None])[0].numpy() / SPEC_MAX
        padded = torch.from_numpy(blocking(spec, 100, 50, True)).float()
        torch.testing.assert_close(clip, package_network()(padded), rtol=0, atol=1e-5)
        loader = SampleLoader({"sound": "audio"}, {"sound": encoder.input_spec})
        torch.testing.assert_close(encoder(loader.load("sound", SHORT_CLIP)[None]), clip)


def test_tiny_variant_shapes_backward_and_padding():
    torch.manual_seed(0)
    encoder = build("audio", "sound-cnn-tiny", width=4, duration=3.0)
    assert encoder.output_dim == 32 and encoder.input_spec.feature == "waveform"
    n = round(3.0 * 44100)
    x = torch.randn(2, n) * 0.1
    x[1, n // 3 :] = 0  # the second clip is a third as long, then padding
    tokens, out = encoder.forward_tokens(x), encoder(x)
    blocks = block_count(torch.tensor(frame_count(n))).item()
    assert tokens.shape == (2, blocks, 32) and out.shape == (2, 32)
    (out.square().mean() + tokens.square().mean()).backward()
    assert all(p.grad is not None for p in encoder.parameters())
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x[1:, : n // 3]), encoder(x)[1:])
        assert torch.isfinite(encoder(torch.zeros(1, 100))).all()  # silence, shorter than a frame


def test_stats_append_each_mel_bands_mean_and_deviation_over_the_sounding_frames():
    torch.manual_seed(0)
    plain = build("audio", "sound-cnn-tiny", width=4, duration=2.0).eval()
    encoder = build("audio", "sound-cnn-tiny", width=4, duration=2.0, stats=True).eval()
    encoder.load_state_dict(plain.state_dict())  # the same CNN, statistics on top
    assert encoder.output_dim == 32 + 2 * 96
    n = 2 * 44100
    x = torch.randn(2, n) * 0.1
    x[1, n // 2 :] = 0  # the second clip is half as long, then padding
    with torch.no_grad():
        out, tokens = encoder(x), encoder.forward_tokens(x)
        torch.testing.assert_close(out[:, :32], plain(x))
        torch.testing.assert_close(tokens.mean(dim=1), out)  # tokens average to the vector
        for row, length in ((0, n), (1, n // 2)):
            spec = log_mel_frames(x[row : row + 1, :length])[0].double().numpy() / SPEC_MAX
            expected = np.concatenate([spec.mean(0), spec.std(0)])
            np.testing.assert_allclose(out[row, 32:].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_stats_of_silence_have_finite_gradients():
    encoder = build("audio", "sound-cnn-tiny", width=4, duration=0.5, stats=True)
    x = torch.zeros(2, 22050)
    x[0] = torch.randn(22050) * 0.1
    x.requires_grad_(True)
    encoder(x).sum().backward()  # FGSM takes this gradient's sign
    assert torch.isfinite(x.grad).all()


def test_registered_with_a_pretrained_option():
    assert {"sound-cnn", "sound-cnn-tiny"} <= set(available()["audio"])
    config = build("audio", "sound-cnn", pretrained=False, duration=2.0).config()
    assert config == {
        "modality": "audio",
        "name": "sound-cnn",
        "pretrained": False,
        "duration": 2.0,
        "stats": False,
    }


def test_saved_model_rebuilds_without_the_package(encoder, monkeypatch):
    monkeypatch.setattr(sound_cnn, "find_spec", lambda name: None)
    with pytest.raises(EncoderError, match=r"make setup.*pip install --no-deps aisfx==0\.1\.2"):
        build("audio", "sound-cnn")
    rebuilt = build("audio", "sound-cnn", pretrained=False).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    x = torch.randn(1, 44100) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), encoder(x))


def test_checkpoint_needs_the_allow_list_and_holds_the_network():
    # Plain weights_only refuses the numpy scalars in the checkpoint's dataset table: the
    # allow-list is what lets it load without unpickling arbitrary objects.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(aisfx_checkpoint(), map_location="cpu", weights_only=True)
    weights = load_aisfx_weights()
    assert set(weights) == set(build("audio", "sound-cnn-tiny").net.state_dict())
    # 8 convs (4,682,304 weights) and 8 BatchNorms (3,840 weights, as many running statistics).
    assert sum(v.numel() for v in weights.values() if v.is_floating_point()) == 4_689_984


@pytest.mark.parametrize("stats", [False, True])
def test_exports_to_onnx_with_a_free_batch_size(encoder, waves, tmp_path, stats):
    """The exporter has no FFT and only a static Unfold: under export the front end cuts
    frames by a gather and takes |rfft|² as two matmuls. The graph, made at batch 2, runs any
    batch and gives the eager embeddings (with the mel statistics too)."""
    import onnxruntime as ort

    if stats:
        plain = encoder
        encoder = build("audio", "sound-cnn", pretrained=False, stats=True).eval()
        encoder.load_state_dict(plain.state_dict())

    n = round(encoder.input_spec.duration * 44100)
    batch = torch.zeros(3, n)
    for i, wave in enumerate(waves[:3]):
        batch[i, : min(n, len(wave))] = wave[:n]
    path = tmp_path / "sound.onnx"
    torch.onnx.export(
        encoder, (batch[:2],), path, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    got = ort.InferenceSession(str(path)).run(None, {"x": batch.numpy()})[0]
    with torch.no_grad():
        want = encoder(batch).numpy()
    # Eager takes a float32 FFT, the graph a float64 DFT: on quiet bins beside loud ones the
    # FFT's rounding moves a log-mel value by up to ~4e-3 (mean 3e-5), the embeddings ~0.3%.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)
