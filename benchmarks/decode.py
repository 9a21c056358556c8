"""Clips/s sampling 8 and 16 frames per clip: mmfuse's automatic sampler vs always-seek vs
always-decode-through (both PyAV, through the same reader) vs OpenCV, in one run.

    .venv/bin/python benchmarks/decode.py [--clips 6] [--repeats 3] [--seconds 10]

Clips are generated here (x264, 320×240, 30 fps) with a key frame every 30 and every 250
frames. Every read includes the probe (its cache is cleared), as a first epoch would pay.
Requires the `bench` extra (opencv-python-headless).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mmfuse.data import video as mvideo
from mmfuse.data.writers import write_video

STRATEGIES = ("auto", "seek", "sequential")


def make_clip(path: Path, seconds: float, fps: int, keyint: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    h, w = 240, 320
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]

    def frames():
        for i in range(n):
            # Moving texture plus noise: realistic inter-frame work for the decoder.
            shift = np.roll(base, shift=3 * i, axis=1)
            blob = ((xx - (i * 5) % w) ** 2 + (yy - h // 2) ** 2 < 900)[..., None] * 200
            noise = rng.integers(0, 24, (h, w, 3), dtype=np.uint8)
            yield np.clip(shift // 2 + blob + noise, 0, 255).astype(np.uint8)

    write_video(path, frames(), fps=fps, codec="libx264", keyframe_interval=keyint)


def read_mmfuse(path: Path, n: int, strategy: str) -> np.ndarray:
    mvideo._probe_cached.cache_clear()
    clip = mvideo.read_video(path, n, strategy=strategy)
    assert clip.frames.shape[0] == n
    return clip.frames.numpy()


def read_opencv(path: Path, n: int) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = [int((i + 0.5) * count / n) for i in range(n)]
        out, want = [], set(wanted)
        # grab() decodes without colour conversion; retrieve() only the wanted frames: the
        # fastest plain-OpenCV way to sample (setting CAP_PROP_POS_FRAMES is slower here).
        for i in range(max(wanted) + 1):
            if not cap.grab():
                break
            if i in want:
                ok, frame = cap.retrieve()
                if ok:
                    out.extend([frame] * wanted.count(i))
        assert len(out) == n, f"OpenCV returned {len(out)} of {n} frames"
        return np.stack(out)
    finally:
        cap.release()


def bench(fns: dict, paths, repeats) -> dict[str, float]:
    """Median clips/s per method; methods take turns each repeat so load spikes hit all alike."""
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for p in paths:
                fn(p)
            rates[name].append(len(paths) / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    try:
        import cv2  # noqa: F401

        have_cv2 = True
    except ImportError:
        have_cv2 = False

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for keyint in (30, 250):
            paths = []
            for i in range(args.clips):
                p = Path(tmp) / f"k{keyint}_{i}.mp4"
                make_clip(p, args.seconds, 30, keyint, seed=i)
                paths.append(p)
            for n in (8, 16):
                fns = {s: (lambda p, s=s, n=n: read_mmfuse(p, n, s)) for s in STRATEGIES}
                if have_cv2:
                    fns["opencv"] = lambda p, n=n: read_opencv(p, n)
                rows.append((keyint, n, bench(fns, paths, args.repeats)))

    header = "| key frame every | frames | auto | seek | sequential | opencv |"
    header += " auto / best PyAV | auto / opencv |"
    print(header)
    print("|" + "---|" * 8)
    for keyint, n, r in rows:
        best = max(r["seek"], r["sequential"])
        cv = r.get("opencv")
        print(
            f"| {keyint} | {n} | {r['auto']:.1f} | {r['seek']:.1f} | {r['sequential']:.1f} | "
            f"{cv or float('nan'):.1f} | {r['auto'] / best:.2f} | "
            f"{(r['auto'] / cv) if cv else float('nan'):.2f} |"
        )
    print("(clips/s, median of repeats; ratios > 1 mean mmfuse's automatic sampler is faster)")


if __name__ == "__main__":
    main()
