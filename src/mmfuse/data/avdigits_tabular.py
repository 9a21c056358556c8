"""avdigits' optional table columns: a noisy measurement and a category, both weakly tied to
the digit, so that a model fusing them with the image beats either alone.

- `weight` (numeric): `WEIGHT_BASE + WEIGHT_STEP · digit` plus Gaussian noise of `WEIGHT_NOISE`
  (about three digits wide), missing in `MISSING` of the rows.
- `ink` (categorical): `INKS[digit % 5]` with probability `INK_TRUE`, else a random ink; so an
  ink names a pair of digits (k and k + 5, whose weights lie far apart), and often lies. Missing
  in `MISSING` of the rows.

The columns are drawn from the label and the row's place in its split alone, so they can be
added to any avdigits folder afterwards (`tabular_manifests`) without touching its media; the
default manifests (`train.csv`, ...) never hold them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmfuse.data.cache import SPLITS

TABULAR_COLUMNS = ("weight", "ink")
INKS = ("black", "blue", "red", "green", "grey")
WEIGHT_BASE, WEIGHT_STEP, WEIGHT_NOISE = 20.0, 2.0, 3.0
INK_TRUE = 0.6
MISSING = 0.1
_STREAM = 7  # avdigits' media use streams 0-3 of the same seed


def with_tabular(frame: pd.DataFrame, seed: int, split: str) -> pd.DataFrame:
    """`frame` (an avdigits split manifest) with the `weight` and `ink` columns added, before
    `label`."""
    rng = np.random.default_rng([seed, _STREAM, SPLITS.index(split)])
    digits = frame["label"].astype(int).to_numpy()
    n = len(frame)
    weight = WEIGHT_BASE + WEIGHT_STEP * digits + rng.normal(0.0, WEIGHT_NOISE, n)
    true_ink = np.asarray(INKS)[digits % len(INKS)]
    random_ink = np.asarray(INKS)[rng.integers(0, len(INKS), n)]
    ink = np.where(rng.random(n) < INK_TRUE, true_ink, random_ink).astype(object)
    weight = np.where(rng.random(n) < MISSING, np.nan, weight.round(2))
    ink[rng.random(n) < MISSING] = None
    out = frame.drop(columns=["label"]).copy()
    out["weight"], out["ink"], out["label"] = weight, ink, frame["label"].to_numpy()
    return out


def tabular_manifests(paths: dict[str, Path], seed: int) -> dict[str, Path]:
    """Beside each split manifest `<split>.csv`, write `<split>-tabular.csv`: the same rows
    with `weight` and `ink`. Returns those paths by split."""
    out = {}
    for split, path in paths.items():
        path = Path(path)
        target = path.with_name(f"{path.stem}-tabular.csv")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # every cell as written
        with_tabular(frame, seed, split).to_csv(target, index=False)
        out[split] = target
    return out
