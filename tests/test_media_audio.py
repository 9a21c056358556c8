"""Audio reader: formats, rates, channels, resampling, crop/pad, video tracks, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from media_factory import (
    TONE_HZ,
    audio_file,
    long_silent_flac,
    poisoned_wav,
    tone,
    truncated_audio,
)
from mmfuse import MediaError, read_audio
from mmfuse.data import audio as audio_mod
from mmfuse.data.audio_scan import audio_stats
from mmfuse.data.budgets import Budgets
from mmfuse.data.writers import write_audio


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


# ---------------------------------------------------------------------------------------------
# Issue 14: poisoned samples, cut-off files, windowed reads within the audio budget


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e30, 2e3])
def test_non_finite_or_absurd_samples_are_refused(tmp_path, value):
    path = poisoned_wav(tmp_path, value)
    with pytest.raises(MediaError) as e:
        read_audio(path, sample_rate=16000, duration=1.0)
    assert e.value.reason == "non-finite" and str(path) in str(e.value)
    with pytest.raises(MediaError, match="non-finite"):
        audio_stats(path)


def test_float_audio_a_little_over_full_scale_is_fine(tmp_path):
    samples, _ = read_audio(poisoned_wav(tmp_path, 1.5))  # float WAV may exceed 1.0
    assert float(samples.abs().max()) == pytest.approx(1.5)


@pytest.mark.parametrize("fmt", ["wav", "flac", "aiff"])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.9])
def test_truncated_pcm_files_are_truncated_not_short(tmp_path, fmt, keep):
    path = truncated_audio(tmp_path, fmt, keep=keep)
    with pytest.raises(MediaError) as e:
        read_audio(path, sample_rate=16000, duration=0.01)  # a window well inside what is left
    assert e.value.reason == "truncated", str(e.value)
    assert "1.500 s" in str(e.value) and str(path) in str(e.value)


def test_wav_whose_header_leaves_the_size_open_is_read_to_its_end(tmp_path):
    # Stream writers cannot go back to fill in the size: 0xFFFFFFFF means "to the end".
    path = audio_file(tmp_path, "wav", 16000, 1, seconds=0.5, name="streamed.wav")
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    samples, _ = read_audio(path)
    assert samples.shape == (8000,)


def test_whole_file_read_over_the_budget_is_refused_from_the_header(tmp_path):
    path = long_silent_flac(tmp_path, seconds=1200)
    with pytest.raises(MediaError) as e:
        read_audio(path)
    assert e.value.reason == "too-large"
    assert "MMFUSE_MAX_AUDIO_SECONDS" in str(e.value) and "duration=" in str(e.value)
    with pytest.raises(MediaError, match="too-large"):
        read_audio(path, duration=700.0)
    samples, _ = read_audio(path, budgets=Budgets(audio_seconds=2000))
    assert samples.shape == (1200 * 8000,)


def test_a_window_decodes_only_the_window(tmp_path, monkeypatch):
    path = long_silent_flac(tmp_path, seconds=1200)
    asked = []
    real_read = sf.read
    monkeypatch.setattr(
        sf, "read", lambda *a, **k: asked.append((k["start"], k["stop"])) or real_read(*a, **k)
    )
    samples, rate = read_audio(path, sample_rate=16000, duration=1.0, crop=0.5)
    assert samples.shape == (16000,) and rate == 16000
    edge = round(0.02 * 8000)  # resampler context on each side
    assert asked == [(round(599.5 * 8000) - edge, round(600.5 * 8000) + edge)]


def test_a_compressed_window_stops_decoding_after_it(tmp_path, monkeypatch):
    path = audio_file(tmp_path, "mp3", 16000, 1, seconds=20.0)
    decoded = []
    real = audio_mod._decoded_chunks

    def counting(*args):
        for chunk, t in real(*args):
            decoded.append(chunk.shape[1])
            yield chunk, t

    monkeypatch.setattr(audio_mod, "_decoded_chunks", counting)
    samples, _ = read_audio(path, duration=1.0, crop=0.5)
    assert samples.shape == (16000,)
    assert sum(decoded) < 2 * 16000  # the seek lands a packet or two early, then it stops
    with pytest.raises(MediaError, match="too-large"):
        read_audio(path, budgets=Budgets(audio_seconds=5))


@pytest.mark.parametrize("fmt", ["wav", "ogg", "opus", "mp3"])
def test_a_resampled_window_matches_the_resampled_whole(tmp_path, fmt):
    path = audio_file(tmp_path, fmt, 44100 if fmt != "opus" else 48000, 1, seconds=3.0)
    whole, _ = read_audio(path, sample_rate=16000)
    part, _ = read_audio(path, sample_rate=16000, offset=1.0, duration=0.5)
    # Codecs shift the start by their priming: compare at the best alignment near 1.0 s.
    errors = [float((part - whole[16000 + k : 24000 + k]).abs().max()) for k in range(-200, 200)]
    assert min(errors) < 1e-3, (fmt, min(errors))


def test_crop_places_the_window(tmp_path):
    wave = np.zeros(10 * 16000, np.float32)
    wave[4 * 16000 : 6 * 16000] = tone(2.0)  # sound only in the middle two seconds
    path = write_audio(tmp_path / "middle.wav", wave, 16000)
    centre, _ = read_audio(path, duration=1.0, crop=0.5)
    start, _ = read_audio(path, duration=1.0, crop=0.0)
    assert float(centre.abs().max()) > 0.4 and float(start.abs().max()) == 0.0
    short, _ = read_audio(path, duration=20.0, crop=0.5)  # longer than the file: padded
    assert short.shape == (20 * 16000,)
    with pytest.raises(ValueError, match="crop"):
        read_audio(path, crop=0.5)  # a crop needs a duration


def test_audio_stats_streams_within_the_budget(tmp_path, media):
    stats = audio_stats(long_silent_flac(tmp_path, seconds=1200))
    assert stats.seconds == pytest.approx(1200) and stats.rms == 0.0
    tone_stats = audio_stats(media["m4a"])
    assert tone_stats.seconds == pytest.approx(1.0, abs=0.1)
    assert tone_stats.rms == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    with pytest.raises(MediaError, match="truncated"):
        audio_stats(truncated_audio(tmp_path, "wav"))


def test_aiff_is_audio(tmp_path):
    path = tmp_path / "tone.aiff"
    sf.write(str(path), tone(1.0), 16000, format="AIFF")
    samples, rate = read_audio(path)
    assert rate == 16000 and samples.shape == (16000,)
    assert abs(_peak_hz(samples, rate) - TONE_HZ) < 3


def test_sample_loader_reads_only_the_models_clip(tmp_path, monkeypatch):
    from mmfuse.features.sample import SampleLoader
    from mmfuse.features.spec import AudioSpec

    wave = np.zeros(10 * 16000, np.float32)
    wave[4 * 16000 : 6 * 16000] = tone(2.0)  # sound only in the middle two seconds
    path = write_audio(tmp_path / "middle.wav", wave, 16000)
    spec = AudioSpec(duration=1.0, feature="waveform")
    asked = []
    real_read = sf.read
    monkeypatch.setattr(
        sf, "read", lambda *a, **k: asked.append(k["stop"] - k["start"]) or real_read(*a, **k)
    )
    clip = SampleLoader({"a": "audio"}, {"a": spec}).load("a", str(path))
    assert clip.shape == (16000,) and float(clip.abs().max()) > 0.4  # the centre
    assert asked == [16000 + 2 * 320]  # one second and the resampler's context

    ramp = write_audio(tmp_path / "ramp.wav", np.linspace(-0.5, 0.5, 160000), 16000)
    train = SampleLoader({"a": "audio"}, {"a": spec}, augment=True)
    draws = [train.load("a", str(ramp), torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    torch.testing.assert_close(draws[0], draws[1])  # reproducible from the generator
    assert not torch.equal(draws[0], draws[2])  # a random place per draw
