"""The audio track both window readers share (`data._sample_track.SampleTrack`), and the live
reader's handling of poisoned audio (silenced and counted, not fatal, never passed on)."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from mmfuse.data._sample_track import SampleTrack
from mmfuse.data.live_source import open_source
from mmfuse.data.live_windows import LiveStats, live_windows


def test_cut_gives_the_samples_at_their_times_and_zero_pads():
    track = SampleTrack(100, 100)
    track.push(np.arange(50, dtype=np.float32), 2.0)
    assert track.end == 2.5
    assert track.cut(2.1, 2.2).tolist() == list(range(10, 20))
    assert track.cut(2.4, 2.6).tolist() == list(range(40, 50)) + [0] * 10
    track.trim(2.305)  # (floor: a sample on the boundary is kept)
    assert track.dropped == 30 and track.cut(2.3, 2.31).tolist() == [30.0]


def test_a_bounded_track_keeps_the_newest_samples_and_their_times():
    track = SampleTrack(100, 100, keep=20)
    track.push(np.arange(15, dtype=np.float32), 0.0)
    track.push(np.arange(15, 60, dtype=np.float32), 0.15)  # one chunk larger than the bound
    assert len(track.buffer) == 20 and track.dropped == 40
    assert track.end == 0.6  # every sample counted, kept or not
    assert track.cut(0.5, 0.6).tolist() == list(range(50, 60))
    assert track.cut(0.0, 0.1).tolist() == [0.0] * 10  # gone: zeros, not other samples


def test_gaps_are_silence_only_where_asked_and_a_long_one_stays_bounded():
    filled = SampleTrack(100, 100, keep=50, fill_gaps=True)
    joined = SampleTrack(100, 100)
    for track in (filled, joined):
        track.push(np.ones(10, np.float32), 0.0)
        track.push(np.full(10, 2.0, np.float32), 0.5)  # 0.4 s of lost packets
    assert filled.end == 0.6 and filled.cut(0.5, 0.6).tolist() == [2.0] * 10
    assert joined.end == 0.2 and joined.cut(0.1, 0.2).tolist() == [2.0] * 10
    filled.push(np.full(10, 3.0, np.float32), 3600.0)  # an hour: not an hour of zeros in memory
    assert len(filled.buffer) == 50 and filled.end == 3600.1
    assert filled.cut(3600.0, 3600.1).tolist() == [3.0] * 10


def test_a_live_source_with_poisoned_audio_is_silenced_and_counted(tmp_path):
    rate = 16000
    samples = 0.1 * np.sin(np.linspace(0, 2000, 4 * rate, dtype=np.float32))
    samples[rate + 100 : rate + 200] = np.nan  # a float encoder's glitch in the second second
    path = tmp_path / "glitch.wav"
    sf.write(path, samples, rate, subtype="FLOAT")
    stats = LiveStats()
    windows = live_windows(
        open_source(str(path)),
        window=1.0,
        stride=1.0,
        frames={},
        audio_rates={"audio": rate},
        stats=stats,
    )
    cut = [w.load()["audio"] for w in windows]
    assert len(cut) == 4 and stats.bad_audio_chunks >= 1
    assert all(torch.isfinite(x).all() for x in cut)
    second, original = cut[1].numpy(), samples[rate : 2 * rate]
    silenced = second == 0
    assert silenced[100:200].all() and silenced.sum() < rate // 2  # the glitch's chunk only
    np.testing.assert_allclose(second[~silenced], original[~silenced], atol=1e-6)
    np.testing.assert_allclose(cut[3].numpy(), samples[3 * rate :], atol=1e-6)
