"""A tiny, generated, separable multimodal dataset for tests, benchmarks and first runs.

Class k is a coloured square on a noisy image, a tone at its own pitch in noise, a caption that
names its colour, and optionally a short clip of the square moving (with the tone as its audio
track). Every modality alone separates the classes, so a correct training loop must reach high
accuracy in a few epochs: a check of the machinery, not of the model. The realistic dataset,
where each modality alone is imperfect, is `avdigits`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mmfuse.data.writers import write_audio, write_video

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 220, 40),
    "purple": (150, 50, 200),
    "cyan": (40, 210, 220),
}
SAMPLE_RATE = 16000


def make_shapes(
    out_dir: str | Path,
    n_per_class: int = 10,
    classes: int = 3,
    *,
    modalities: tuple[str, ...] = ("image", "audio", "text"),
    image_size: int = 32,
    audio_seconds: float = 0.25,
    video_frames: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """Write the files under `out_dir` and `out_dir/manifest.csv`; return the manifest.

    Rows are shuffled; `label` holds the colour name; paths are relative to `out_dir`.
    """
    if not 2 <= classes <= len(COLOURS):
        raise ValueError(f"classes must be in [2, {len(COLOURS)}], got {classes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)[:classes]
    rows = []
    for k, name in enumerate(names):
        for i in range(n_per_class):
            stem = f"{name}-{i:04d}"
            row = {"label": name}
            square = _square_frames(rng, COLOURS[name], image_size, video_frames)
            tone = _tone(rng, 300.0 * (k + 1), audio_seconds)
            if "image" in modalities:
                Image.fromarray(square[0]).save(out / f"{stem}.png")
                row["image"] = f"{stem}.png"
            if "audio" in modalities:
                write_audio(out / f"{stem}.wav", tone, SAMPLE_RATE)
                row["audio"] = f"{stem}.wav"
            if "video" in modalities:
                write_video(
                    out / f"{stem}.mp4",
                    square,
                    fps=video_frames,
                    audio=tone,
                    audio_rate=SAMPLE_RATE,
                )
                row["video"] = f"{stem}.mp4"
            if "text" in modalities:
                filler = rng.choice(["a", "the", "one", "some", "small", "bright"], size=2)
                row["text"] = f"{filler[0]} {name} square, {filler[1]} shape"
            rows.append(row)
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    frame.to_csv(out / "manifest.csv", index=False)
    return frame


def _square_frames(rng, colour, size: int, frames: int) -> np.ndarray:
    """T×H×W×3 uint8: a square of `colour` moving across grey noise."""
    side = size // 2
    x0, y0 = rng.integers(0, size - side, size=2)
    dx = int(rng.integers(-1, 2))
    base = rng.integers(60, 140, size=(frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        x = int(np.clip(x0 + dx * t, 0, size - side))
        base[t, y0 : y0 + side, x : x + side] = colour
    return base


def _tone(rng, hz: float, seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.5 * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))
    return (wave + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
