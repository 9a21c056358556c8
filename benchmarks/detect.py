"""`detect_events` over a long video: windows/s, wall time and memory held as the run goes on,
against the obvious alternative, `read_video` (frames + audio track) per window.

    .venv/bin/python benchmarks/detect.py [--minutes 60] [--naive-minutes 2] [--model DIR]

The video is generated first, in a child process (so its memory does not count in this one's
peak RSS): `--size` px square, `--fps` frames/s, x264 + AAC at 16 kHz, coloured squares and
tones changing every 5-40 s. Without `--model` the model is the tiny frames + audio-from-video
architecture of tests/test_detect.py with untrained weights: the speed and memory of a forward
pass do not depend on what the weights learned. Peak RSS (`ru_maxrss`) and current RSS are
read at 10 %, 50 % and 100 % of the windows: flat numbers mean memory does not grow with the
length. The naive approach runs on the first `--naive-minutes` only and is extrapolated.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmfuse.data.synthetic import COLOURS, SAMPLE_RATE
from mmfuse.data.video import probe_video, read_video, sliding_windows
from mmfuse.data.writers import write_video
from mmfuse.infer.detect import detect_events
from mmfuse.infer.predictor import Predictor
from mmfuse.model import FusionConfig, HeadConfig, InputConfig, ModelConfig, MultimodalModel
from mmfuse.model.saved import save_model

CLASSES = ["background", "red", "green", "blue"]


def make_video(path: Path, minutes: float, size: int, fps: int, seed: int = 0) -> None:
    """Segments of 5-40 s, each a class: its square colour and its tone (or noise only)."""
    rng = np.random.default_rng(seed)
    total = round(minutes * 60)
    labels: list[str] = []
    while len(labels) < total:
        labels += [CLASSES[rng.integers(len(CLASSES))]] * int(rng.integers(5, 41))
    labels = labels[:total]
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    audio = np.empty(total * SAMPLE_RATE, np.float32)  # 1 h: 230 MB, in this child only
    for second, label in enumerate(labels):
        wave = 0.05 * rng.standard_normal(SAMPLE_RATE)
        if label != "background":
            wave += 0.5 * np.sin(2 * np.pi * 300.0 * CLASSES.index(label) * t)
        audio[second * SAMPLE_RATE : (second + 1) * SAMPLE_RATE] = wave

    def frames():
        side = size // 2
        for label in labels:
            x0, y0 = rng.integers(0, size - side, size=2)
            for _ in range(fps):
                frame = rng.integers(60, 140, size=(size, size, 3), dtype=np.uint8)
                if label != "background":
                    frame[y0 : y0 + side, x0 : x0 + side] = COLOURS[label]
                yield frame

    write_video(path, frames(), fps=fps, audio=audio, audio_rate=SAMPLE_RATE)


def tiny_model(path: Path) -> Path:
    frames = {"image": "cnn", "image_options": {"width": 8, "stages": 2, "image_size": 32}}
    mel = {"width": 8, "stages": 2, "n_mels": 32, "duration": 0.5}
    config = ModelConfig(
        inputs={
            "video": InputConfig("video", "video", "frames", {**frames, "frames": 4}),
            "video_audio": InputConfig("video", "audio", "mel-cnn", mel),
        },
        heads=[HeadConfig("label", CLASSES)],
        fusion=FusionConfig("attention", 32),
    )
    torch.manual_seed(0)
    return save_model(path, MultimodalModel.from_config(config).eval(), config)


def rss_mb() -> tuple[float, float]:
    """(peak RSS so far, current RSS) of this process in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return peak, current


def run_detect(predictor: Predictor, video: Path, args) -> dict:
    marks, samples = [0.1, 0.5, 1.0], {}

    def progress(done: int, total: int) -> None:
        while marks and done >= marks[0] * total:
            samples[marks.pop(0)] = rss_mb()

    start = time.perf_counter()
    timeline = detect_events(
        predictor,
        video,
        window=args.window,
        stride=args.stride,
        batch=args.batch,
        background="background",
        progress=progress,
    )
    wall = time.perf_counter() - start
    return {"windows": len(timeline["windows"]), "wall": wall, "rss": samples, "tl": timeline}


def run_naive(predictor: Predictor, video: Path, args) -> dict:
    """`read_video(..., with_audio=True)` per window + the same transforms, batched alike."""
    start = time.perf_counter()
    info = probe_video(video, max_bytes=None)  # read_video probes once per file (cached)
    limit = min(args.naive_minutes * 60, info.duration)
    windows = [w for w in sliding_windows(info.duration, args.window, args.stride) if w[1] <= limit]
    transforms = predictor.loader.transforms
    frames = predictor.specs["video"].frames
    rate = predictor.specs["video_audio"].sample_rate
    queue = []
    for s, e in windows:
        clip = read_video(
            video, frames, start=s, end=e, with_audio=True, audio_rate=rate, max_bytes=None
        )
        with torch.no_grad():
            queue.append(
                {
                    "video": transforms["video"](clip.frames, indices=torch.arange(frames)),
                    "video_audio": transforms["video_audio"](clip.audio),
                }
            )
        if len(queue) == args.batch:
            predictor.predict_tensors(queue)
            queue.clear()
    if queue:
        predictor.predict_tensors(queue)
    return {"windows": len(windows), "wall": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="video length (default: 60)")
    p.add_argument("--size", type=int, default=64, help="frame side in px (default: 64)")
    p.add_argument("--fps", type=int, default=8, help="frames per second (default: 8)")
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--stride", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--naive-minutes", type=float, default=2.0, help="naive run length")
    p.add_argument("--model", type=Path, help="a model folder (default: the tiny untrained one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--keep", type=Path, help="generate into / reuse this video file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        video = args.keep or Path(tmp) / "long.mp4"
        if not video.exists():
            start = time.perf_counter()
            child = multiprocessing.get_context("fork").Process(
                target=make_video, args=(video, args.minutes, args.size, args.fps)
            )
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"generating {video} failed (exit {child.exitcode})")
            print(f"generated {video} in {time.perf_counter() - start:.1f} s")
        size_mb = video.stat().st_size / 2**20
        model = args.model or tiny_model(Path(tmp) / "model")
        predictor = Predictor(model)
        base_peak, base_now = rss_mb()
        print(
            f"video: {args.minutes:g} min, {args.size}×{args.size} px, {args.fps} fps, "
            f"{size_mb:.1f} MB; window {args.window:g} s, stride {args.stride:g} s, "
            f"batch {args.batch}, torch threads {torch.get_num_threads()}"
        )
        print(f"RSS after loading the model: peak {base_peak:.0f} MB, current {base_now:.0f} MB")

        streamed = run_detect(predictor, video, args)
        naive = run_naive(predictor, video, args)

    total = streamed["windows"]
    naive_rate = naive["windows"] / naive["wall"]
    print()
    print(
        "| approach | windows | wall (s) | windows/s | RSS peak / current (MB) at 10 / 50 / 100 % |"
    )
    print("|---|---:|---:|---:|---|")
    marks = " / ".join(
        f"{streamed['rss'][m][0]:.0f}/{streamed['rss'][m][1]:.0f}" for m in (0.1, 0.5, 1.0)
    )
    print(
        f"| detect_events (one pass) | {total} | {streamed['wall']:.1f} | "
        f"{total / streamed['wall']:.1f} | {marks} |"
    )
    print(
        f"| read_video per window, first {args.naive_minutes:g} min | {naive['windows']} | "
        f"{naive['wall']:.1f} | {naive_rate:.1f} | |"
    )
    print(
        f"| read_video per window, extrapolated to {args.minutes:g} min | {total} | "
        f"{total / naive_rate:.0f} | {naive_rate:.1f} | |"
    )
    stats = streamed["tl"]["stats"]
    print()
    print(
        f"one pass: {stats['frames_decoded']} frames decoded, {stats['frames_converted']} "
        f"converted; held at most {stats['peak_frames_held']} frames, "
        f"{stats['peak_windows_open']} open windows, "
        f"{stats['peak_audio_samples_held'] / SAMPLE_RATE:.2f} s of audio; "
        f"{len(streamed['tl']['events'])} events"
    )
    print(f"speed-up over read_video per window: {total / naive_rate / streamed['wall']:.1f}×")


if __name__ == "__main__":
    main()
