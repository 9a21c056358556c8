"""`mmfuse detect`: a model trained on 1-second shapes clips finds known events in a long video.

One tiny model (frames + audio-from-video inputs) is trained through `train_model` on the shapes
clips plus a "background" class (grey noise, faint hiss). A 2-minute video is then made with
known segments (square colour and tone of class k) and the detected events are checked against
them to within one stride. The streamed windows are also checked against the obvious reference,
`read_video` per window, and the reader's buffers against a bound that ignores the length.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmfuse.cli import detect as detect_cli
from mmfuse.data.manifest import read_manifest
from mmfuse.data.synthetic import COLOURS, SAMPLE_RATE, make_shapes
from mmfuse.data.video import read_video
from mmfuse.data.video_stream import StreamStats
from mmfuse.data.writers import write_video
from mmfuse.infer.detect import (
    DetectError,
    detect_events,
    merge_windows,
    stream_windows,
    video_windows,
)
from mmfuse.infer.predictor import Predictor
from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel
from mmfuse.model.saved import save_model
from mmfuse.train import TrainConfig
from mmfuse.train.run import train_model

CLASSES = ["red", "green", "blue"]
FPS, SIZE = 8, 32
WINDOW, STRIDE = 2.0, 1.0
# (label, start, end) seconds: events of 15-25 s between stretches of background and each other.
TRUTH = [
    ("background", 0, 10),
    ("red", 10, 30),
    ("background", 30, 45),
    ("green", 45, 60),
    ("blue", 60, 85),
    ("background", 85, 95),
    ("red", 95, 120),
]


def model_config() -> ModelConfig:
    frames = {"image": "cnn", "image_options": {"width": 8, "stages": 2, "image_size": 32}}
    mel = {"width": 8, "stages": 2, "n_mels": 32, "duration": 0.5}
    return ModelConfig(
        inputs={
            "video": InputConfig("video", "video", "frames", {**frames, "frames": 4}),
            "video_audio": InputConfig("video", "audio", "mel-cnn", mel),
        },
        heads=[HeadConfig("label", ["background", *CLASSES])],
        fusion=FusionConfig("attention", 32),
    )


def second_of(rng, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One second of the scene: FPS×SIZE×SIZE×3 frames and the audio (as make_shapes draws it)."""
    frames = rng.integers(60, 140, size=(FPS, SIZE, SIZE, 3), dtype=np.uint8)
    noise = 0.05 * rng.standard_normal(SAMPLE_RATE)
    if label == "background":
        return frames, noise.astype(np.float32)
    side = SIZE // 2
    x0, y0 = rng.integers(0, SIZE - side, size=2)
    dx = int(rng.integers(-1, 2))
    for t in range(FPS):
        x = int(np.clip(x0 + dx * t, 0, SIZE - side))
        frames[t, y0 : y0 + side, x : x + side] = COLOURS[label]
    hz = 300.0 * (CLASSES.index(label) + 1)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    return frames, (0.5 * np.sin(2 * np.pi * hz * t) + noise).astype(np.float32)


def make_long_video(path, segments, seed: int = 0):
    """A video of whole seconds, each showing the label of the segment it falls in."""
    rng = np.random.default_rng(seed)
    seconds = [label for label, a, b in segments for _ in range(a, b)]
    parts = [second_of(rng, label) for label in seconds]
    frames = (f for clip, _ in parts for f in clip)
    audio = np.concatenate([sound for _, sound in parts])
    return write_video(path, frames, fps=FPS, audio=audio, audio_rate=SAMPLE_RATE)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model, trained on shapes clips plus background clips, saved as a model folder."""
    root = tmp_path_factory.mktemp("detect")
    data = root / "data"
    clips = make_shapes(data, 6, 3, modalities=("video",), audio_seconds=1.0, video_frames=FPS)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        frames, sound = second_of(rng, "background")
        write_video(data / f"bg-{i}.mp4", frames, fps=FPS, audio=sound, audio_rate=SAMPLE_RATE)
        rows.append({"label": "background", "video": f"bg-{i}.mp4"})
    frame = pd.concat([clips, pd.DataFrame(rows)]).sample(frac=1.0, random_state=0)
    frame.to_csv(data / "manifest.csv", index=False)
    manifest = read_manifest(data / "manifest.csv", modalities={"video": "video"})
    config = model_config()
    train_config = TrainConfig(
        epochs=15,
        batch_size=4,
        lr=1e-2,
        augment=False,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    run = train_model(
        manifest, config, train_config, root / "run", evaluate=False, log=lambda s: None
    )
    return save_model(root / "model", run.model, config, train_config=train_config.to_dict())


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return make_long_video(tmp_path_factory.mktemp("long") / "long.mp4", TRUTH)


@pytest.fixture(scope="module")
def cli_run(model_dir, long_video, tmp_path_factory):
    """`mmfuse detect MODEL VIDEO --background background --out ... --plot ...` via its parser."""
    out = tmp_path_factory.mktemp("cli")
    parser = argparse.ArgumentParser()
    detect_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            str(model_dir),
            str(long_video),
            "--background",
            "background",
            "--out",
            str(out / "timeline.json"),
            "--plot",
            str(out / "timeline.png"),
            "--quiet",
        ]
    )
    assert detect_cli.run(args) == 0
    return out


def test_events_match_the_known_segments(cli_run):
    timeline = json.loads((cli_run / "timeline.json").read_text())
    truth = [(label, a, b) for label, a, b in TRUTH if label != "background"]
    events = timeline["events"]
    assert [e["label"] for e in events] == [label for label, _, _ in truth], events
    for event, (_, start, end) in zip(events, truth):
        assert abs(event["start"] - start) <= STRIDE, (event, start)
        assert abs(event["end"] - end) <= STRIDE, (event, end)
        assert 0.5 < event["confidence"] <= 1.0


def test_timeline_json_lists_every_window(cli_run, long_video):
    timeline = json.loads((cli_run / "timeline.json").read_text())
    assert timeline["video"] == str(long_video)
    assert (timeline["window"], timeline["stride"]) == (WINDOW, STRIDE)
    assert timeline["duration"] == pytest.approx(120.0)
    windows = timeline["windows"]
    assert len(windows) == 119  # starts 0, 1, ..., 118
    assert [w["start"] for w in windows] == [float(s) for s in range(119)]
    for w in windows:
        assert w["end"] - w["start"] == pytest.approx(WINDOW)
        probs = w["probabilities"]
        assert set(probs) == {"background", *CLASSES}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert w["label"] == max(probs, key=probs.get)
    # The background's stretches are windows too, just not events.
    assert windows[2]["label"] == "background"


def test_plot_is_a_png(cli_run):
    with Image.open(cli_run / "timeline.png") as im:
        im.verify()
        assert im.format == "PNG"
        assert im.size[0] > 600


def test_streamed_windows_equal_read_video_per_window(model_dir, tmp_path):
    """The one-pass reader feeds each window what `read_video` + the transforms would give."""
    video = make_long_video(tmp_path / "short.mp4", [("red", 0, 3), ("blue", 3, 6)], seed=3)
    predictor = Predictor(model_dir)
    duration, windows = video_windows(video, 1.5, 0.7)  # uneven: the last window is pulled back
    assert windows[-1] == (duration - 1.5, duration)
    streamed = dict(stream_windows(predictor, video, windows))
    assert sorted(streamed) == list(range(len(windows)))
    spec_v, spec_a = predictor.specs["video"], predictor.specs["video_audio"]
    transforms = predictor.loader.transforms
    for index, (start, end) in enumerate(windows):
        clip = read_video(
            video, spec_v.frames, start=start, end=end, with_audio=True, audio_rate=SAMPLE_RATE
        )
        with torch.no_grad():
            frames = transforms["video"](clip.frames, indices=torch.arange(spec_v.frames))
            audio = transforms["video_audio"](clip.audio)
        torch.testing.assert_close(streamed[index]["video"], frames, rtol=0, atol=0)
        # Same samples, resampled as one stream instead of per window: equal up to edge effects
        # (the transform keeps the centre, away from the window's edges).
        assert spec_a.sample_rate == SAMPLE_RATE
        torch.testing.assert_close(streamed[index]["video_audio"], audio, rtol=0, atol=0.05)


def test_buffers_do_not_grow_with_the_length(model_dir, tmp_path):
    """Frames and audio held at once are bounded by the window, not by the video's length."""
    predictor = Predictor(model_dir)
    stats = {}
    for seconds in (10, 40):
        video = make_long_video(tmp_path / f"{seconds}.mp4", [("red", 0, seconds)], seed=seconds)
        _, windows = video_windows(video, WINDOW, STRIDE)
        s = StreamStats()
        count = sum(1 for _ in stream_windows(predictor, video, windows, stats=s))
        assert count == len(windows) == seconds - 1
        assert s.frames_decoded == seconds * FPS
        stats[seconds] = s
    frames_per_window = predictor.specs["video"].frames
    # A window opens at its start and closes on the first frame after its last sample time.
    open_bound = math.ceil((WINDOW + 1 / FPS) / STRIDE) + 1
    for s in stats.values():
        assert s.peak_windows_open <= open_bound
        assert s.peak_frames_held <= open_bound * frames_per_window
        # Audio: the open windows' span plus one decoded frame's worth (AAC: 1024 samples).
        assert s.peak_audio_samples_held <= (WINDOW + STRIDE + 0.1) * SAMPLE_RATE
    short, long = stats[10], stats[40]
    assert long.peak_frames_held == short.peak_frames_held
    assert long.peak_windows_open == short.peak_windows_open
    assert long.peak_audio_samples_held <= short.peak_audio_samples_held + 2048


def test_merge_windows_tiles_the_video_and_drops_background():
    def w(start, label, p):
        rest = (1 - p) / 2
        probs = {"bg": rest, "a": rest, "b": rest} | {label: p}
        return {"start": start, "end": start + 2.0, "label": label, "probabilities": probs}

    windows = [w(0, "a", 0.9), w(1, "a", 0.7), w(2, "bg", 0.8), w(3, "b", 0.6), w(3.5, "b", 1.0)]
    events = merge_windows(windows, background="bg")
    # Boundaries halfway between window centres; the ends of the video at the outer windows.
    assert events == [
        {"label": "a", "start": 0, "end": 2.5, "confidence": 0.8},
        {"label": "b", "start": 3.5, "end": 5.5, "confidence": 0.8},
    ]
    assert [e["label"] for e in merge_windows(windows)] == ["a", "bg", "b"]
    assert merge_windows([]) == []


def test_usage_errors_name_the_fix(model_dir, long_video, tmp_path):
    with pytest.raises(DetectError, match=r"--background 'sky'.*background"):
        detect_events(model_dir, long_video, background="sky", progress=False)
    with pytest.raises(DetectError, match="--stride"):
        detect_events(model_dir, long_video, stride=0, progress=False)
    # A model with no video or audio input cannot be fed from a video.
    config = ModelConfig(
        inputs={"image": InputConfig("image", "image", "cnn", {"width": 8, "image_size": 32})},
        heads=[HeadConfig("label", CLASSES)],
        fusion=FusionConfig("concat", 16),
    )
    torch.manual_seed(0)
    image_only = save_model(tmp_path / "image-only", MultimodalModel.from_config(config), config)
    with pytest.raises(DetectError, match=r"no video or audio input.*'image'"):
        detect_events(image_only, long_video, progress=False)


def test_a_truncated_file_keeps_the_windows_before_its_end(model_dir, tmp_path):
    whole = tmp_path / "whole.mp4"
    rng = np.random.default_rng(5)
    parts = [second_of(rng, "green") for _ in range(20)]
    write_video(
        whole,
        (f for clip, _ in parts for f in clip),
        fps=FPS,
        audio=np.concatenate([sound for _, sound in parts]),
        audio_rate=SAMPLE_RATE,
        faststart=True,  # the index first, as a recording cut off mid-way still has it
    )
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    timeline = detect_events(model_dir, cut, progress=False)
    stopped = timeline["stats"]["truncated_at"]
    assert stopped is not None and 5 < stopped < 15
    assert timeline["duration"] == stopped
    assert timeline["windows"] and all(w["start"] < stopped for w in timeline["windows"])
    assert [e["label"] for e in timeline["events"]] == ["green"]


def test_only_the_video_and_its_track_are_fed(tmp_path):
    """Inputs on other columns (an audio file, a caption) are absent, as in a missing cell."""
    mel = {"width": 8, "stages": 2, "n_mels": 32, "duration": 0.5}
    base = model_config()
    inputs = {
        **base.inputs,
        "speech": InputConfig("speech", "audio", "mel-cnn", mel),
        "caption": InputConfig("caption", "text", "embedding-bag", {"dim": 8, "vocab_size": 64}),
    }
    config = ModelConfig(inputs=inputs, heads=base.heads, fusion=FusionConfig("attention", 16))
    torch.manual_seed(0)
    folder = save_model(tmp_path / "model", MultimodalModel.from_config(config), config)
    predictor = Predictor(folder)
    video = make_long_video(tmp_path / "v.mp4", [("blue", 0, 4)])
    _, windows = video_windows(video, WINDOW, STRIDE)
    samples = [sample for _, sample in stream_windows(predictor, video, windows)]
    assert len(samples) == 3
    assert all(set(sample) == {"video", "video_audio"} for sample in samples)
    timeline = detect_events(predictor, video, progress=False)
    assert len(timeline["windows"]) == 3
