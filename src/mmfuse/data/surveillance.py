"""surveillance: generated camera clips with sound, for one-class anomaly detection.

Each clip is `SECONDS` s of `WIDTH`×`HEIGHT` video at `FPS` fps with a 16 kHz AAC track, from
one of `CAMERAS` fixed scenes. Normal clips: the static scene under a slight lighting change,
one or two passers-by walking slowly, a steady background sound (brownish noise and a hum).
Anomalies, of three kinds:

- visual: a large saturated object bursts into view (the sound stays normal);
- acoustic: a crash, breaking glass or a shout over the background (the picture stays normal);
- both: the two at once.

Splits: `train.csv` and `val.csv` hold normal clips only (fit, and the threshold's held-out
normal data); `test.csv` holds normal clips and anomalies, evenly over the kinds. Columns:
`video`, `label` (normal or anomaly) and, in test, `kind` (normal, visual, acoustic, both).
Generation is deterministic in `(samples, seed)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmfuse.data._surveillance_media import (
    CAMERAS,
    FPS,
    HEIGHT,
    KINDS,
    SAMPLE_RATE,
    SECONDS,
    WIDTH,
    Clip,
    clip_media,
    render_clip,
    steady_levels,
)
from mmfuse.data.writers import write_video
from mmfuse.errors import MmfuseError

MARKER = "surveillance.json"
# Shares of the clips per split; half of the test clips are anomalies. The val share is large
# because a threshold for a false-alarm rate a needs at least 1/a - 1 held-out normal clips:
# the default 400 clips give 120, enough for the default a = 0.01.
SPLIT_SHARES = {"train": 0.4, "val": 0.3, "test": 0.3}
MIN_SAMPLES = 12

__all__ = [
    "FPS",
    "HEIGHT",
    "KINDS",
    "SAMPLE_RATE",
    "SECONDS",
    "WIDTH",
    "make_surveillance",
    "plan",
    "write_scene",
]


def plan(samples: int, seed: int = 0) -> dict[str, list[Clip]]:
    """The clips of each split: index, camera (round robin) and kind."""
    if not isinstance(samples, int) or samples < MIN_SAMPLES:
        raise MmfuseError(
            f"surveillance needs --samples >= {MIN_SAMPLES} (train, val and a test split with "
            f"normal clips and every anomaly kind), got {samples!r}"
        )
    n_val = round(samples * SPLIT_SHARES["val"])
    n_test = round(samples * SPLIT_SHARES["test"])
    n_train = samples - n_val - n_test
    n_anomalies = max(len(KINDS), n_test // 2)
    test_kinds = ["normal"] * (n_test - n_anomalies) + [
        KINDS[i % len(KINDS)] for i in range(n_anomalies)
    ]
    kinds = {"train": ["normal"] * n_train, "val": ["normal"] * n_val, "test": test_kinds}
    splits, index = {}, 0
    for split, split_kinds in kinds.items():
        splits[split] = []
        for kind in split_kinds:
            splits[split].append(Clip(index, index % CAMERAS, kind, seed))
            index += 1
    return splits


def make_surveillance(out_dir: str | Path, *, samples: int = 400, seed: int = 0) -> dict[str, Path]:
    """Write `out_dir/{train,val,test}.csv` and the clips under `out_dir/media/`; return the
    manifest paths by split. The marker `surveillance.json` is written last."""
    splits = plan(samples, seed)
    out = Path(out_dir)
    (out / MARKER).unlink(missing_ok=True)  # from here on the folder is incomplete
    (out / "media").mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, clips in splits.items():
        rows = []
        for clip in clips:
            name = f"media/{clip.index:05d}.mp4"
            render_clip(out / name, clip)
            row = {"video": name, "label": "normal" if clip.kind == "normal" else "anomaly"}
            if split == "test":
                row["kind"] = clip.kind
            rows.append(row)
        paths[split] = out / f"{split}.csv"
        pd.DataFrame(rows).to_csv(paths[split], index=False)
    marker = {"samples": samples, "seed": seed, "seconds": SECONDS, "fps": FPS}
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return paths


def write_scene(
    path: str | Path,
    kinds: Sequence[str],
    *,
    camera: int = 0,
    seed: int = 0,
    first_index: int = 100_000,
    size: tuple[int, int] | None = None,
) -> list[tuple[float, float, str]]:
    """One long recording from `camera`: a `SECONDS`-long clip per entry of `kinds` ("normal"
    or one of `KINDS`), back to back, clip i drawn as clip `first_index + i` of the dataset
    `seed` (so not one of `make_surveillance`'s), under one lighting and sound level drawn for
    the camera (a recording does not jump in loudness every 2 s, clips do). Returns the
    `(start, end, kind)` spans of the anomalous clips (the anomaly starts somewhere inside its
    span).

    `size`: `(width, height)` to scale the picture to (nearest neighbour), e.g. `(320, 240)`.
    The container follows the suffix (`.ts`: MPEG-TS, as streamed); every frame is a key frame,
    so a stream of it can be joined anywhere."""
    bad = sorted(set(kinds) - {"normal", *KINDS})
    if bad or not kinds:
        raise MmfuseError(
            f"write_scene: kinds must be normal or one of {KINDS}, got {bad or kinds}"
        )
    clips = [Clip(first_index + i, camera, kind, seed) for i, kind in enumerate(kinds)]
    steady = steady_levels(camera, seed)
    media = [clip_media(c, steady) for c in clips]
    rows = cols = None
    if size is not None:
        rows = (np.arange(size[1]) * HEIGHT // size[1])[:, None]
        cols = (np.arange(size[0]) * WIDTH // size[0])[None, :]
    frames = (f if rows is None else f[rows, cols] for video, _ in media for f in video)
    audio = np.concatenate([sound for _, sound in media])
    write_video(
        path,
        frames,
        fps=FPS,
        keyframe_interval=1,
        audio=audio,
        audio_rate=SAMPLE_RATE,
        audio_codec="aac",
    )
    return [(i * SECONDS, (i + 1) * SECONDS, k) for i, k in enumerate(kinds) if k != "normal"]
