"""Video reader: probe, sampling strategies, windows, codecs, VFR, rotation, audio, bad files."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import torch

from media_factory import FPS, frame_index, huge_mjpeg, pattern, poisoned_video, video_file
from mmfuse import MediaError, probe_video, read_audio, read_video
from mmfuse.data import sample_times, sliding_windows
from mmfuse.data.budgets import Budgets
from mmfuse.data.video_stream import read_windows

CODECS = ["h264_mp4", "h264_audio_mkv", "vp9_webm", "mpeg4_avi", "mpeg4_mp4", "vp9_audio_webm"]


def _indices(clip) -> list[int]:
    return [frame_index(f.numpy()) for f in clip.frames]


@pytest.mark.parametrize("key", CODECS)
def test_probe_and_uniform_sampling_per_codec(media, key):
    info = probe_video(media[key])
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(FPS)
    assert info.frame_count == 40 and info.decodable_frames == 40 and not info.truncated
    assert info.duration == pytest.approx(1.6, abs=0.08)  # audio may run a packet longer
    assert info.has_audio == ("audio" in key)
    clip = read_video(media[key], 8)
    assert clip.frames.shape == (8, 3, 48, 64) and clip.frames.dtype == torch.uint8
    # Segment centres of 1.6 s in 8 parts: 0.1, 0.3, ... → frames 2, 7, 12, ...
    assert _indices(clip) == [2, 7, 12, 17, 22, 27, 32, 37]
    assert clip.timestamps.tolist() == pytest.approx([i / FPS for i in _indices(clip)])


@pytest.mark.parametrize("key", ["keyint_30", "keyint_250"])
@pytest.mark.parametrize("n", [8, 16])
def test_strategies_return_identical_frames(media, key, n):
    info = probe_video(media[key])
    expected_interval = 30 if key == "keyint_30" else 150  # 300 frames: key frames at 0 and 250
    assert info.keyframe_interval == pytest.approx(expected_interval)
    clips = {s: read_video(media[key], n, strategy=s) for s in ("auto", "seek", "sequential")}
    assert torch.equal(clips["auto"].frames, clips["seek"].frames)
    assert torch.equal(clips["auto"].frames, clips["sequential"].frames)
    count = info.frame_count
    assert _indices(clips["auto"]) == [int((i + 0.5) * count / n) for i in range(n)]


def test_window_random_mode_and_resize(media):
    path = media["keyint_30"]  # 90 frames, 3.6 s
    clip = read_video(path, 4, start=1.0, end=2.0)
    assert _indices(clip) == [28, 34, 40, 46]  # 1.125 s, 1.375 s, ... at 25 fps
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = read_video(path, 6, mode="random", generator=g1)
    b = read_video(path, 6, mode="random", generator=g2)
    assert torch.equal(a.frames, b.frames)
    idx = _indices(a)
    assert all(i * 15 <= f < (i + 1) * 15 for i, f in enumerate(idx))  # one per segment
    small = read_video(path, 2, size=(24, 32))
    assert small.frames.shape == (2, 3, 24, 32)


def test_more_frames_than_the_clip_has_repeats_frames(media):
    clip = read_video(media["odd_size"], 20)  # 10 frames
    assert clip.frames.shape == (20, 3, 239, 321)
    assert sorted(set(_indices(clip))) == list(range(10))


def test_variable_frame_rate_uses_real_timestamps(media):
    info = probe_video(media["vfr"])
    gaps = np.diff(info.frame_times)
    assert gaps.min() == pytest.approx(0.04, abs=2e-3) and gaps.max() == pytest.approx(
        0.08, abs=2e-3
    )
    clip = read_video(media["vfr"], 5)
    for t, f in zip(clip.timestamps.tolist(), _indices(clip)):
        assert t == pytest.approx(info.frame_times[f], abs=1e-6)
    # Each returned frame is the one on screen at its segment's centre time.
    wanted = sample_times(0, info.duration, 5)
    for w, t in zip(wanted, clip.timestamps.tolist()):
        assert t <= w + 1e-6 and w - t < 0.081


@pytest.mark.parametrize("key", ["rotated_90", "rotated_90_cli"])
def test_rotation_metadata_is_applied(media, key):
    info = probe_video(media[key])
    assert info.rotation == 90 and (info.width, info.height) == (48, 64)
    clip = read_video(media[key], 2)
    assert clip.frames.shape == (2, 3, 64, 48)
    plain = read_video(media["h264_mp4"], 2).frames[0]
    # rotation=90 means "turn 90° counter-clockwise to display"
    upright = torch.rot90(plain, k=1, dims=(1, 2))
    if key == "rotated_90_cli":  # a copy of h264_mp4 with a rotation tag
        assert torch.equal(clip.frames[0], upright)
    first = 2 if key == "rotated_90" else 10  # 10 vs 40 frames
    assert frame_index(clip.frames[0].rot90(k=-1, dims=(1, 2)).numpy()) == first


def test_audio_track_of_the_same_window(media):
    clip = read_video(media["h264_audio_mp4"], 4, start=0.4, end=1.2, with_audio=True)
    assert clip.sample_rate == 16000 and clip.audio.shape == (int(0.8 * 16000),)
    assert float(clip.audio.abs().max()) > 0.1
    silent = read_video(media["h264_mp4"], 2, with_audio=True)
    assert silent.audio is None


@pytest.mark.parametrize("key", ["truncated_mp4", "truncated_clean_mp4"])
def test_truncated_file_is_an_error_not_fewer_frames(media, key):
    info = probe_video(media[key])
    assert info.truncated and info.frame_count == 300 and info.decodable_frames < 100
    with pytest.raises(MediaError) as e:
        read_video(media[key], 8)
    assert e.value.reason == "truncated" and "300" in str(e.value)
    # The part that is there can still be read on purpose.
    clip = read_video(media[key], 4, start=0.0, end=1.0)
    assert _indices(clip) == [3, 9, 15, 21]


@pytest.mark.parametrize(
    "key, reason",
    [
        ("text_mp4", "wrong-modality"),
        ("empty_wav", "zero-length"),
        ("wav_int16_mono", "wrong-modality"),
        ("m4a", "wrong-modality"),  # an MP4 container with audio only
        ("random_jpg", "wrong-modality"),
    ],
)
def test_bad_files(media, key, reason):
    with pytest.raises(MediaError) as e:
        read_video(media[key])
    assert e.value.reason == reason


def test_containers_are_closed(media):
    path = media["h264_audio_mp4"]
    read_video(path, 2, with_audio=True)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        read_video(path, 2, with_audio=True)
        with pytest.raises(MediaError):
            read_video(media["truncated_mp4"], 8)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_long_odd_video_written_in_a_stream(tmp_path):
    path = video_file(tmp_path, "long.mp4", frames=200, size=(33, 21), keyframe_interval=50)
    info = probe_video(path)
    assert info.frame_count == 200 and (info.width, info.height) == (33, 21)
    assert len(info.keyframe_indices) == 4


def test_sample_times_and_sliding_windows():
    assert sample_times(0, 1, 4) == [0.125, 0.375, 0.625, 0.875]
    with pytest.raises(ValueError, match="valid: uniform, random"):
        sample_times(0, 1, 4, mode="dense")
    assert sliding_windows(5.0, 2.0, 1.0) == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert sliding_windows(5.5, 2.0, 2.0) == [(0, 2), (2, 4), (3.5, 5.5)]
    assert sliding_windows(1.0, 2.0, 1.0) == [(0.0, 1.0)]
    assert pattern().shape == (32, 48, 3)


# ---------------------------------------------------------------------------------------------
# Issue 14: frame and clip budgets from the header; only sampled frames kept; poisoned tracks


def test_huge_frame_is_refused_before_decoding(tmp_path, monkeypatch):
    path = huge_mjpeg(tmp_path)  # one 8000×8000 frame in about 0.4 MB
    decoded = []
    real_decode = av.container.InputContainer.decode
    monkeypatch.setattr(
        av.container.InputContainer,
        "decode",
        lambda self, *a, **k: decoded.append(a) or real_decode(self, *a, **k),
    )
    for read in (probe_video, lambda p: read_video(p, 8)):
        with pytest.raises(MediaError) as e:
            read(path)
        assert e.value.reason == "too-large" and "8000×8000" in str(e.value)
        assert "MMFUSE_MAX_IMAGE_PIXELS" in str(e.value)
    assert decoded == []
    read_video(video_file(tmp_path, "small.mp4", frames=4), 2)
    assert decoded  # the spy sees a real decode
    windows = read_windows(path, [(0.0, 0.04)], frames={"video": 1}, audio_rates={})
    with pytest.raises(MediaError, match="too-large"):
        next(windows)


def test_frames_times_pixels_budget(media):
    path = media["h264_mp4"]  # 64×48
    budgets = Budgets(video_pixels=8 * 64 * 48 - 1)
    with pytest.raises(MediaError) as e:
        read_video(path, 8, budgets=budgets)
    assert e.value.reason == "too-large" and "MMFUSE_MAX_VIDEO_PIXELS" in str(e.value)
    clip = read_video(path, 8, size=(24, 32), budgets=budgets)  # smaller frames fit
    assert clip.frames.shape == (8, 3, 24, 32)
    windows = read_windows(path, [(0.0, 1.0)], frames={"v": 8}, audio_rates={}, budgets=budgets)
    with pytest.raises(MediaError, match="too-large"):
        next(windows)  # a generator: the check runs on the first step


def test_audio_of_a_window_over_the_audio_budget(media):
    with pytest.raises(MediaError, match="too-large"):
        read_video(media["h264_audio_mp4"], 4, with_audio=True, budgets=Budgets(audio_seconds=1))
    clip = read_video(media["h264_audio_mp4"], 4, end=0.8, with_audio=True)
    assert clip.audio.shape == (round(0.8 * 16000),)


def test_only_the_sampled_frames_are_converted(media, monkeypatch):
    import mmfuse.data.video as video_mod

    converted = []
    real = video_mod.frame_to_rgb
    monkeypatch.setattr(
        video_mod, "frame_to_rgb", lambda f, *a: converted.append(f.pts) or real(f, *a)
    )
    read_video(media["keyint_250"], 4)  # 300 frames, 4 sampled
    assert len(converted) == 4


def test_non_finite_audio_track_is_refused(tmp_path):
    path = poisoned_video(tmp_path)
    with pytest.raises(MediaError) as e:
        read_video(path, 4, with_audio=True)
    assert e.value.reason == "non-finite"
    assert read_video(path, 4).frames.shape[0] == 4  # the picture alone is fine
    with pytest.raises(MediaError, match="non-finite"):
        read_audio(path)
    with pytest.raises(MediaError, match="non-finite"):
        list(read_windows(path, [(0.0, 1.0)], frames={}, audio_rates={"a": 16000}))
