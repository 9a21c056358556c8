"""`AnomalyDetector`: learn what normal looks and sounds like from normal samples only.

    det = AnomalyDetector(scorer="gaussian", false_alarm=0.01)
    det.fit("train.csv", val="val.csv")      # normal rows only; val: held-out normal rows
    det.score_samples(df)                     # higher = more anomalous
    det.predict(df)                           # bool: above the calibrated threshold
    det.save("detector/"); AnomalyDetector.load("detector/")

Per input (a video column gives its frames and its audio track), frozen encoder features are
scored by a one-class scorer fitted on the reference part of the normal data. Each input's
score is standardised by its mean and std on held-out normal data, and the inputs' z-scores are
combined as `sum(z) / sqrt(inputs present)` (Stouffer): under normal data the combination keeps
unit scale whatever the number of inputs present, so a row with a missing input (it does not
vote) is judged against the same threshold. The threshold is the held-out fused scores'
conformal quantile for the target false-alarm rate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from mmfuse.anomaly.features import Features, build_encoders, extract, input_configs
from mmfuse.anomaly.scorers import make_scorer
from mmfuse.data.manifest import Manifest, as_manifest
from mmfuse.device import resolve_device
from mmfuse.model.config import ConfigError

NORMAL = "normal"
# Fewer reference or held-out samples than this for an input and it cannot be scored.
MIN_SAMPLES = 2


class NotFittedError(ValueError, AttributeError):
    """score/predict/save before fit."""


class AnomalyDetector(BaseEstimator):
    """One-class detector on image, audio, video (frames and audio track) and text inputs.

    Args:
        scorer: "gaussian" (Mahalanobis distance, Ledoit-Wolf shrinkage covariance; the
            default, measured best in docs/anomaly.md) or "knn" (mean distance to the k
            nearest normal features); see `anomaly.scorers`.
        k: neighbours of the knn scorer.
        false_alarm: the target share of normal samples flagged; sets the threshold.
        preset, encoders: which frozen encoder reads each input, as for MultimodalClassifier
            (default: the pretrained ones where installed). `encoders` may also name an
            input of a video's audio track, `<column>_audio`.
        holdout: without `val`, the share of the fit rows held out for standardising and the
            threshold (the rest is the scorers' reference).
        seed: the holdout split's seed.
        batch_size, workers, device, cache_dir: feature extraction (cache_dir: the feature
            cache's root, default mmfuse's cache folder).
        verbose: progress bars and notes.
    """

    def __init__(
        self,
        scorer: str = "gaussian",
        k: int = 5,
        false_alarm: float = 0.01,
        preset: str | None = None,
        encoders: Mapping | None = None,
        holdout: float = 0.3,
        seed: int = 0,
        batch_size: int = 32,
        workers: int = 0,
        device: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        verbose: bool = False,
    ):
        self.scorer = scorer
        self.k = k
        self.false_alarm = false_alarm
        self.preset = preset
        self.encoders = encoders
        self.holdout = holdout
        self.seed = seed
        self.batch_size = batch_size
        self.workers = workers
        self.device = device
        self.cache_dir = cache_dir
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def fit(self, X, val=None, *, modalities: Mapping[str, str] | None = None, root=None):
        """Fit on normal samples `X` (DataFrame, manifest file or Manifest); return self.

        `val`: held-out normal samples for standardising and the threshold (default: a
        `holdout` share of `X`). Rows whose label column says other than "normal" are left out.
        """
        self._check_params()
        train = _normal_rows(as_manifest(X, modalities=modalities, root=root), self._log)
        self.inputs_ = input_configs(train, self.encoders, self.preset)
        self.encoders_ = build_encoders(self.inputs_)
        feats = self._extract(train)
        if val is None:
            reference, held = _split(feats, len(train), self.holdout, self.seed)
        else:
            roles = self.column_roles()
            held_manifest = _normal_rows(as_manifest(val, modalities=roles, root=root), self._log)
            reference, held = feats, self._extract(held_manifest)
        self.notes_ = []
        self.scorers_, self.stats_ = {}, {}
        for name in list(self.inputs_):
            ref = reference.values[name][reference.present[name]]
            out = held.values[name][held.present[name]]
            if len(ref) < MIN_SAMPLES or len(out) < MIN_SAMPLES:
                self._drop(name, len(ref), len(out))
                continue
            scorer = make_scorer(self.scorer, self.k).fit(ref)
            held_scores = scorer.score(out)
            std = float(held_scores.std())
            self.scorers_[name] = scorer
            self.stats_[name] = {"mean": float(held_scores.mean()), "std": std if std > 0 else 1.0}
        if not self.scorers_:
            raise ConfigError("no input could be scored: every input lacks readable rows")
        fused = self._fused(held)
        self.threshold_ = self._calibrate(fused[~np.isnan(fused)])
        self.n_reference_ = int(max(reference.present[n].sum() for n in self.scorers_))
        self.n_held_out_ = int((~np.isnan(fused)).sum())
        return self

    def _check_params(self) -> None:
        make_scorer(self.scorer, self.k)
        if not 0.0 < self.false_alarm < 1.0:
            raise ConfigError(
                f"false_alarm must be in (0, 1), got {self.false_alarm!r}; e.g. --false-alarm 0.01"
            )
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"holdout must be in (0, 1), got {self.holdout!r}; e.g. 0.3")

    def _drop(self, name: str, n_ref: int, n_held: int) -> None:
        note = (
            f"input {name!r} left out: {n_ref} reference and {n_held} held-out rows could be "
            f"read, {MIN_SAMPLES} of each are needed (e.g. videos without an audio track)"
        )
        self.notes_.append(note)
        self._log(note)
        del self.inputs_[name], self.encoders_[name]

    def _calibrate(self, held: np.ndarray) -> float:
        threshold, enough = conformal_threshold(held, self.false_alarm)
        if not enough:
            note = (
                f"only {len(held)} held-out normal samples: a false-alarm rate of "
                f"{self.false_alarm:g} needs at least {math.ceil(1 / self.false_alarm) - 1}; "
                "the threshold is their highest score. Give more normal data (--val)"
            )
            self.notes_.append(note)
            self._log(note)
        return threshold

    # ------------------------------------------------------------------ scoring
    def _extract(self, manifest: Manifest) -> Features:
        return extract(
            manifest,
            self.inputs_,
            self.encoders_,
            cache_dir=None if self.cache_dir is None else str(self.cache_dir),
            batch_size=self.batch_size,
            workers=self.workers,
            device=str(resolve_device(self.device)),
            progress=self.verbose,
        )

    def input_z(self, name: str, features: np.ndarray) -> np.ndarray:
        """Input `name`'s score of N×D encoder features, standardised by its held-out normal
        scores: what the fusion combines and what the threshold is in units of."""
        stats = self.stats_[name]
        return (self.scorers_[name].score(features) - stats["mean"]) / stats["std"]

    def _input_scores(self, feats: Features) -> dict[str, np.ndarray]:
        """Per input, the z-score on held-out normal data; NaN where the input is absent."""
        out = {}
        for name in self.scorers_:
            z = np.full(len(feats.present[name]), np.nan)
            rows = feats.present[name]
            if rows.any():
                z[rows] = self.input_z(name, feats.values[name][rows])
            out[name] = z
        return out

    def _fused(self, feats: Features) -> np.ndarray:
        return fuse_scores(self._input_scores(feats))

    def score_table(self, X, *, root=None) -> pd.DataFrame:
        """One row per sample: `score`, `anomaly`, `score_<input>` (its z-score), `error`."""
        self._check_fitted()
        manifest = as_manifest(X, modalities=self.column_roles(), root=root)
        feats = self._extract(manifest)
        per_input = self._input_scores(feats)
        fused = fuse_scores(per_input)
        table = pd.DataFrame({"score": fused, "anomaly": _above(fused, self.threshold_)})
        for name in sorted(per_input):
            table[f"score_{name}"] = per_input[name]
        table["error"] = [
            "; ".join(feats.errors[r]) if r in feats.errors else None for r in range(len(table))
        ]
        return table

    def column_roles(self) -> dict[str, str]:
        # A video column also feeds an audio input: its declared role is video.
        roles: dict[str, str] = {}
        for spec in self.inputs_.values():
            if roles.get(spec.column) != "video":
                roles[spec.column] = spec.modality
        return roles

    def score_samples(self, X) -> np.ndarray:
        """The fused anomaly score per sample (higher = more anomalous); NaN where no input
        could be read."""
        return self.score_table(X)["score"].to_numpy(dtype=float)

    def predict(self, X) -> np.ndarray:
        """True where the score is above the threshold (False where no input could be read)."""
        return _above(self.score_samples(X), self.threshold_)

    def evaluate(self, X, out_dir=None, *, root=None) -> dict:
        """ROC-AUC, PR-AUC, the confusion at the threshold and per-input ablation on `X`,
        which needs a label column of normal/anomaly; with `out_dir`, the report."""
        from mmfuse.anomaly.evaluation import evaluate_detector

        return evaluate_detector(self, X, out_dir, root=root)

    def _check_fitted(self) -> None:
        if not hasattr(self, "scorers_"):
            raise NotFittedError(
                "this AnomalyDetector is not fitted yet; call fit(...) or "
                "AnomalyDetector.load(folder) first"
            )

    def _log(self, message: str) -> None:
        if self.verbose:
            print(message)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike):
        """Write the detector folder (detector.json, detector.safetensors)."""
        from mmfuse.anomaly.folder import save_detector

        self._check_fitted()
        return save_detector(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> AnomalyDetector:
        from mmfuse.anomaly.folder import load_detector

        return load_detector(cls, path, device)


def fuse_scores(per_input: Mapping[str, np.ndarray]) -> np.ndarray:
    """`sum(z) / sqrt(inputs present)` per row over the inputs' z-scores; NaN z-scores (absent
    inputs) do not vote; NaN where no input is present."""
    z = np.stack([np.asarray(v, dtype=float) for v in per_input.values()])  # M×N
    present = ~np.isnan(z)
    count = present.sum(axis=0)
    total = np.where(present, z, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.sqrt(count), np.nan)


def conformal_threshold(held: np.ndarray, false_alarm: float) -> tuple[float, bool]:
    """`(threshold, enough)`: the held-out normal scores' ceil((n+1)(1-a))-th smallest, so a
    new normal sample scores above it with chance <= a (split conformal); with too few scores
    for that rank (`enough` False), their highest."""
    n = len(held)
    rank = math.ceil((n + 1) * (1.0 - false_alarm))
    return float(np.sort(held)[min(rank, n) - 1]), rank <= n


def _above(scores: np.ndarray, threshold: float) -> np.ndarray:
    return np.nan_to_num(scores, nan=-np.inf) > threshold


def _normal_rows(manifest: Manifest, log) -> Manifest:
    """The rows a label column (if any) calls normal, or that have no label."""
    if not manifest.label:
        return manifest
    labels = [manifest.value(r, manifest.label) for r in range(len(manifest))]
    keep = [r for r, v in enumerate(labels) if v is None or str(v) == NORMAL]
    if len(keep) < len(manifest):
        log(f"{manifest.source}: {len(manifest) - len(keep)} rows not labelled normal left out")
    if not keep:
        raise ConfigError(
            f"{manifest.source}: no row of column {manifest.label!r} is {NORMAL!r}; fit on "
            "normal samples only (label them normal, or drop the label column)"
        )
    frame = manifest.frame.iloc[keep].reset_index(drop=True)
    return replace(manifest, frame=frame)


def _split(feats: Features, n: int, holdout: float, seed: int) -> tuple[Features, Features]:
    order = np.random.default_rng(seed).permutation(n)
    n_held = min(max(round(n * holdout), MIN_SAMPLES), n - MIN_SAMPLES)
    if n_held < MIN_SAMPLES:
        raise ConfigError(
            f"{n} normal rows are too few to hold {MIN_SAMPLES} out for the threshold and keep "
            f"{MIN_SAMPLES} as reference; give at least {2 * MIN_SAMPLES} (or a val manifest)"
        )
    held, ref = np.sort(order[:n_held]), np.sort(order[n_held:])

    def take(rows):
        return Features(
            {k: v[rows] for k, v in feats.values.items()},
            {k: v[rows] for k, v in feats.present.items()},
            {},
        )

    return take(ref), take(held)
