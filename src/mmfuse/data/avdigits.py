"""avdigits: a generated audio-visual-text digits dataset made from real signals.

Ten classes, "0".."9". Every sample has four inputs, each corrupted on its own random stream so
that their errors are independent and fusing them pays:

- image: a real handwritten digit (scikit-learn's bundled 8×8 `load_digits`) upscaled to 48 px,
  affinely distorted (rotation, scale, shear, shift), with noise and an occluding rectangle or
  ellipse; written as a grayscale PNG.
- audio: the digit's word spoken by espeak-ng (one of `VOICES`, `SPEEDS`, `PITCHES`), shifted in
  time and mixed with coloured noise at an SNR in `SNR_DB`; 1 s, 16 kHz mono WAV.
- video: another handwriting sample of the digit moving over a noisy background with an
  occluder in most frames, carrying another utterance of the word (other voice, other noise)
  as its AAC track; 1 s, 10 fps, 48×48 H.264 MP4.
- text: a short caption that names the digit only sometimes (`CAPTION_RATES`), sometimes
  names a confusable wrong one, and otherwise says nothing about it.

Handwriting is split between train/val/test too, so a test image is never a train image
redistorted. Generation is deterministic in `(samples, seed)`: each sample draws from its own
generators, whatever the number of worker processes. Each distinct utterance is synthesised
once (in a thread pool) and mixed per sample.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from mmfuse.data._avdigits_media import (
    AUDIO_STREAM,
    CAPTION_RATES,
    IMAGE_STREAM,
    PITCHES,
    SAMPLE_RATE,
    SNR_DB,
    SPEEDS,
    TEXT_STREAM,
    VIDEO_STREAM,
    VOICES,
    WORDS,
    SampleTask,
    Utterance,
    caption,
    render,
    speak,
    utterance,
)
from mmfuse.data.avdigits_tabular import TABULAR_COLUMNS, tabular_manifests
from mmfuse.data.cache import SPLITS, manifest_paths, read_marker
from mmfuse.errors import MmfuseError

VERSION = 2
MARKER = "avdigits.json"
COLUMNS = ("image", "audio", "video", "text", "label")


def avdigits_path(samples: int = 2000, seed: int = 0) -> Path:
    """`<cache>/avdigits-<samples>-<seed>`, the cache being mmfuse's (`$MMFUSE_CACHE`, ...)."""
    # Imported here: mmfuse.train imports mmfuse.data, so a top-level import could loop.
    from mmfuse.data.cache import default_cache_dir

    return default_cache_dir() / f"avdigits-{samples}-{seed}"


def ensure_avdigits(
    samples: int = 2000,
    seed: int = 0,
    root: str | Path | None = None,
    progress: bool = True,
    *,
    tabular: bool = False,
) -> dict[str, Path]:
    """The split manifests of avdigits under `root` (default `avdigits_path`), generated first
    unless a complete generation of the same `(samples, seed, version)` is already there.
    `tabular=True`: the `<split>-tabular.csv` manifests, with `weight` and `ink` columns."""
    root = Path(root) if root is not None else avdigits_path(samples, seed)
    if read_marker(root / MARKER) == _marker(samples, seed):
        paths = manifest_paths(root)
    else:
        paths = make_avdigits(root, samples=samples, seed=seed, progress=progress)
    return tabular_manifests(paths, seed) if tabular else paths


def make_avdigits(
    out_dir: str | Path,
    *,
    samples: int = 2000,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    workers: int | None = None,
    progress: bool = True,
    tabular: bool = False,
) -> dict[str, Path]:
    """Write `out_dir/{train,val,test}.csv` and the media under `out_dir/media/`; return the
    manifest paths by split. Columns: image, audio, video, text, label (paths relative).
    `tabular=True` also writes `<split>-tabular.csv` with a numeric `weight` and a categorical
    `ink` column (`data.avdigits_tabular`) and returns those paths instead.

    Classes are balanced and every class is split by `splits`. `workers` processes write the
    files (default: the CPUs this process may use). The marker `avdigits.json` is written
    last, so a folder without it is an interrupted generation.
    """
    _check_args(samples, splits)
    if shutil.which("espeak-ng") is None:
        raise MmfuseError(
            "avdigits speaks its digits with espeak-ng, which is not on PATH; "
            "install it with `apt-get install espeak-ng` (or `make setup`)"
        )
    out = Path(out_dir)
    (out / MARKER).unlink(missing_ok=True)  # from here on the folder is incomplete
    for modality in ("image", "audio", "video"):
        (out / "media" / modality).mkdir(parents=True, exist_ok=True)
    workers = workers or _usable_cpus()

    tasks, split_of = _plan(samples, seed, splits)
    needed = sorted({key for task in tasks for key in (task.speech, task.video_speech)})
    clean = _synthesize_all(needed, threads=max(4, 2 * workers), progress=progress)
    jobs = [(out, t, clean[t.speech], clean[t.video_speech]) for t in tasks]
    rows = dict(zip([t.index for t in tasks], _run(jobs, workers, progress)))

    paths = manifest_paths(out)
    for split, path in paths.items():
        frame = pd.DataFrame([rows[i] for i in split_of[split]], columns=list(COLUMNS))
        frame.to_csv(path, index=False)
    (out / MARKER).write_text(json.dumps(_marker(samples, seed)) + "\n")
    return tabular_manifests(paths, seed) if tabular else paths


# ---------------------------------------------------------------------------------------------
# Planning: which handwriting, utterances and caption each sample gets, drawn up front so the
# utterances can be synthesised once, before the files are written.


def _plan(
    samples: int, seed: int, splits: tuple[float, float, float]
) -> tuple[list[SampleTask], dict[str, list[int]]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng([seed, samples])
    labels = rng.permutation(np.arange(samples) % 10)
    cuts = np.cumsum(splits)
    split_of, split_by_index = _stratified_split(rng, labels, cuts, splits)
    pools = _handwriting_pools(rng, digits.target, cuts)
    tasks = []
    for i in range(samples):
        k = int(labels[i])
        rngs = [np.random.default_rng([seed, i, stream]) for stream in range(4)]
        pool = pools[split_by_index[i], k]
        if len(pool) < 2:
            raise ValueError(
                f"splits={splits} leaves the {SPLITS[split_by_index[i]]!r} split fewer than 2 "
                f"handwriting samples of class {k}; use larger fractions"
            )
        image_row, video_row = rngs[IMAGE_STREAM].choice(pool, size=2, replace=False)
        voice, video_voice = rngs[AUDIO_STREAM].choice(len(VOICES), size=2, replace=False)
        tasks.append(
            SampleTask(
                index=i,
                label=k,
                digit=digits.images[image_row],
                video_digit=digits.images[video_row],
                speech=utterance(rngs[AUDIO_STREAM], k, int(voice)),
                video_speech=utterance(rngs[VIDEO_STREAM], k, int(video_voice)),
                text=caption(rngs[TEXT_STREAM], k),
                rngs=rngs,
            )
        )
    return tasks, split_of


def _stratified_split(
    rng: np.random.Generator, labels: np.ndarray, cuts: np.ndarray, splits
) -> tuple[dict[str, list[int]], np.ndarray]:
    """`(split → sorted sample indices, split number of each sample)`.

    Each sample's place within its class (random, in (0, 1)) orders the whole set, which is
    then cut at the split fractions, so every split gets its share of every class and the
    split sizes are exact.
    """
    samples = len(labels)
    place = np.empty(samples)
    for k in range(10):
        members = rng.permutation(np.flatnonzero(labels == k))
        place[members] = (np.arange(len(members)) + 0.5) / len(members)
    order = rng.permutation(samples)  # ties between classes fall in random order
    order = order[np.argsort(place[order], kind="stable")]
    split_of: dict[str, list[int]] = {}
    split_by_index = np.empty(samples, dtype=int)
    for s, (lo, hi) in enumerate(_bounds(cuts, samples)):
        if hi == lo:
            raise ValueError(
                f"samples={samples} with splits={splits} leaves the {SPLITS[s]!r} split empty; "
                "use more samples or larger fractions"
            )
        split_of[SPLITS[s]] = sorted(order[lo:hi].tolist())
        split_by_index[order[lo:hi]] = s
    return split_of, split_by_index


def _handwriting_pools(
    rng: np.random.Generator, targets: np.ndarray, cuts: np.ndarray
) -> dict[tuple[int, int], np.ndarray]:
    """(split, class) → rows of load_digits: handwriting is split too, so no 8×8 sample shows
    up in two splits."""
    pools: dict[tuple[int, int], np.ndarray] = {}
    for k in range(10):
        writers = rng.permutation(np.flatnonzero(targets == k))
        for s, (lo, hi) in enumerate(_bounds(cuts, len(writers))):
            pools[s, k] = writers[lo:hi]
    return pools


def _bounds(cuts: np.ndarray, n: int) -> list[tuple[int, int]]:
    edges = [0, *(min(n, round(c * n)) for c in cuts)]
    edges[-1] = n
    return list(itertools.pairwise(edges))


def _synthesize_all(keys: list[Utterance], threads: int, progress: bool) -> dict:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = pool.map(lambda key: speak(*key), keys)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(keys), desc="avdigits: speaking", leave=False)
        return dict(zip(keys, results))


# ---------------------------------------------------------------------------------------------
# Writing: each sample rendered from its task alone, in worker processes.


def _run(jobs: list, workers: int, progress: bool):
    def track(results):
        if not progress:
            return list(results)
        from tqdm.auto import tqdm

        return list(tqdm(results, total=len(jobs), desc="avdigits: writing", leave=False))

    if workers <= 1:
        return track(map(render, jobs))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return track(pool.map(render, jobs, chunksize=8))


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_args(samples: int, splits) -> None:
    if samples < 10:
        raise ValueError(f"samples must be at least 10 (one per class), got {samples}")
    if len(splits) != 3 or min(splits) < 0 or not math.isclose(sum(splits), 1.0):
        raise ValueError(
            f"splits must be three fractions (train, val, test) summing to 1, got {splits}"
        )


def _marker(samples: int, seed: int) -> dict:
    return {"samples": samples, "seed": seed, "version": VERSION}


__all__ = [
    "CAPTION_RATES",
    "COLUMNS",
    "MARKER",
    "PITCHES",
    "SAMPLE_RATE",
    "SNR_DB",
    "SPEEDS",
    "SPLITS",
    "TABULAR_COLUMNS",
    "VERSION",
    "VOICES",
    "WORDS",
    "avdigits_path",
    "ensure_avdigits",
    "make_avdigits",
    "speak",
    "tabular_manifests",
]
