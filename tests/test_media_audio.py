"""Audio reader: formats, rates, channels, resampling, crop/pad, video tracks, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from media_factory import TONE_HZ
from mmfuse import MediaError, read_audio


def _peak_hz(samples: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.numpy().astype(np.float64)))
    return float(np.fft.rfftfreq(samples.shape[-1], 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    "key, rate",
    [
        ("wav_int16_mono", 16000),
        ("wav_float_stereo", 16000),
        ("wav_8k", 8000),
        ("wav_44k", 44100),
        ("wav_48k", 48000),
        ("flac", 16000),
        ("ogg", 16000),
        ("mp3", 16000),
        ("opus", 48000),  # FFmpeg always decodes Opus at 48 kHz
        ("m4a", 16000),
        ("aac", 16000),
        ("mp3_stereo_44k", 44100),
    ],
)
def test_formats_decode_at_native_rate_and_resample(media, key, rate):
    samples, sr = read_audio(media[key], sample_rate=None)
    assert sr == rate and samples.dtype == torch.float32 and samples.ndim == 1
    assert abs(samples.shape[0] / sr - 1.0) < 0.1  # 1 s tones; codecs pad a frame or two
    assert float(samples.abs().max()) <= 1.0 + 1e-6
    assert abs(_peak_hz(samples, sr) - TONE_HZ) < 3

    at16, sr16 = read_audio(media[key], sample_rate=16000, duration=1.0)
    assert sr16 == 16000 and at16.shape == (16000,)
    assert abs(_peak_hz(at16, 16000) - TONE_HZ) < 3


def test_channels_kept_when_not_mono(media):
    stereo, sr = read_audio(media["wav_float_stereo"], mono=False)
    assert stereo.shape[0] == 2 and stereo.shape[1] == sr
    mono, _ = read_audio(media["wav_float_stereo"])
    torch.testing.assert_close(mono, stereo.mean(0))


def test_matches_librosa_load(media):
    import librosa

    ours, _ = read_audio(media["wav_44k"], sample_rate=16000)
    ref, _ = librosa.load(media["wav_44k"], sr=16000)
    assert ours.shape[0] == ref.shape[0]
    assert np.abs(ours.numpy() - ref).max() < 1e-3  # same soxr resampler; HQ vs VHQ filters


@pytest.mark.parametrize("key", ["wav_int16_mono", "m4a"])
def test_offset_duration_crop_and_pad(media, key):
    full, _ = read_audio(media[key], sample_rate=16000)
    part, _ = read_audio(media[key], sample_rate=16000, offset=0.25, duration=0.5)
    assert part.shape == (8000,)
    start = 4000
    if key == "wav_int16_mono":  # sample-exact for PCM
        torch.testing.assert_close(part, full[start : start + 8000])
    padded, _ = read_audio(media[key], sample_rate=16000, offset=0.5, duration=2.0)
    assert padded.shape == (32000,) and float(padded[-8000:].abs().max()) == 0.0
    unpadded, _ = read_audio(media[key], sample_rate=16000, offset=0.5, duration=2.0, pad=False)
    assert unpadded.shape[0] < 32000


def test_video_audio_track_and_speech(media):
    track, sr = read_audio(media["h264_audio_mp4"], sample_rate=16000)
    assert sr == 16000 and abs(track.shape[0] / sr - 1.6) < 0.1  # 40 frames at 25 fps
    assert abs(_peak_hz(track, sr) - TONE_HZ) < 3
    speech, sr = read_audio(media["speech"], sample_rate=16000)
    assert 0.2 < speech.shape[0] / sr < 3 and float(speech.abs().max()) > 0.05


@pytest.mark.parametrize(
    "key, reason",
    [
        ("empty_wav", "zero-length"),
        ("h264_mp4", "wrong-modality"),  # a video without an audio track
        ("text_mp4", "wrong-modality"),
        ("png_named_jpg", "wrong-modality"),
        ("random_jpg", "wrong-modality"),  # starts like a JPEG
    ],
)
def test_bad_files(media, key, reason):
    with pytest.raises(MediaError) as e:
        read_audio(media[key])
    assert e.value.reason == reason


def test_missing_offset_past_end_and_truncated(tmp_path, media):
    with pytest.raises(MediaError, match="missing"):
        read_audio(tmp_path / "nope.wav")
    with pytest.raises(MediaError, match="too-short"):
        read_audio(media["wav_int16_mono"], offset=5.0)
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="unreadable"):
        read_audio(noise)
    data = media["flac"].read_bytes()
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(media["m4a"].read_bytes()[:-3000])
    with pytest.raises(MediaError) as e:
        read_audio(cut)
    assert e.value.reason in ("truncated", "unreadable")
    assert data  # the original is untouched
