"""What an ensemble is made of: `--ensemble fusion=attention,gated,late --ensemble seeds=3`.

Each part sets one axis; the members are every combination of the axes given (fusion method ×
encoder preset × seed), the classifier's own setting standing in for an axis not given.
`folds=K` trains each member on K folds of the training and validation rows pooled (k-fold
bagging, `train.folds`) instead of once on the training rows.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mmfuse.model.config import ConfigError

KEYS = ("fusion", "preset", "seeds", "folds", "jobs", "groups", "weights")
# A modality as a key varies its encoder: `image=efficientnet-lite0,efficientnet-lite2`.
ENCODER_KEYS = ("image", "audio", "video", "text")
# How the members are weighed: "selected" on the held-out rows, "equal", or "auto" (selected
# where those rows can tell the weights from equal ones: `train.ensemble.choose_weights`).
WEIGHINGS = ("auto", "selected", "equal")
EXAMPLE = "--ensemble fusion=attention,gated,late --ensemble seeds=3"
# Metrics greedy selection can optimise: log loss is minimised, the others maximised.
SELECTION_METRICS = ("log_loss", "accuracy", "balanced_accuracy", "f1_macro")


@dataclass(frozen=True)
class MemberPlan:
    """One member to train: its name (its folder under `members/`), fusion, preset, seed and
    the encoder of each modality the ensemble varies (`{modality: name}`)."""

    name: str
    fusion: str
    preset: str | None
    seed: int
    encoders: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass
class EnsembleSpec:
    """The axes of an ensemble; None: the classifier's own value."""

    fusion: list[str] | None = None
    preset: list[str] | None = None
    seeds: int = 1
    folds: int = 0  # 0: no bagging; K >= 2: each member a bag of K fold models
    jobs: int = 1  # members (or fold models) trained at once, each in its own process
    groups: str | None = None  # a column whose rows stay in one fold (with folds)
    weights: str = "auto"  # one of WEIGHINGS
    encoders: dict[str, list[str]] = field(default_factory=dict)  # modality → encoder names

    def members(self, fusion: str, preset: str | None, seed: int) -> list[MemberPlan]:
        """Every combination, named by what varies (`gated-seed1`, `fast-attention-seed0`,
        `efficientnet-lite2-late-seed0`)."""
        presets = self.preset or [preset]
        choices = [dict(zip(self.encoders, c)) for c in itertools.product(*self.encoders.values())]
        plans = []
        for p, enc, f, s in itertools.product(
            presets, choices, self.fusion or [fusion], range(seed, seed + self.seeds)
        ):
            # A folder name: `hf:org/model` is written `hf-org-model`.
            named = [re.sub(r"[^A-Za-z0-9._-]+", "-", e).strip("-") for e in enc.values()]
            parts = [p] * bool(self.preset) + named + [f, f"seed{s}"]
            plans.append(MemberPlan("-".join(parts), f, p, s, enc))
        if len(plans) < 2 and not self.folds:  # one member on folds is a bag of K models
            raise ConfigError(
                f"the ensemble {self.to_dict()} has one member; give at least two, e.g. {EXAMPLE}, "
                "or bag one over folds: folds=5"
            )
        return plans

    def to_dict(self) -> dict:
        out: dict = {"seeds": self.seeds}
        if self.folds:
            out["folds"] = self.folds
        if self.jobs != 1:
            out["jobs"] = self.jobs
        if self.groups:
            out["groups"] = self.groups
        if self.weights != "auto":
            out["weights"] = self.weights
        out |= {k: v for k, v in (("fusion", self.fusion), ("preset", self.preset)) if v}
        return out | {m: list(names) for m, names in self.encoders.items()}


def parse_ensemble(spec: str | Sequence[str] | Mapping | EnsembleSpec | None):
    """`"fusion=a,b"`, a list of such parts, or `{"fusion": [...], "seeds": 3}` → EnsembleSpec;
    None → None (no ensemble). A bad part is a ConfigError naming the allowed keys."""
    if spec is None or isinstance(spec, EnsembleSpec):
        return spec
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, Mapping):
        spec = dict(_part(p) for p in spec)
    unknown = sorted(set(spec) - set(KEYS) - set(ENCODER_KEYS))
    if unknown:
        raise ConfigError(
            f"ensemble key(s) {unknown} unknown; allowed keys: {', '.join(KEYS)}, or a modality "
            f"({', '.join(ENCODER_KEYS)}) to vary its encoder (e.g. {EXAMPLE})"
        )
    out = EnsembleSpec()
    for key in ("fusion", "preset"):
        if spec.get(key):
            setattr(out, key, _values(spec[key]))
    out.encoders = {m: _values(spec[m]) for m in ENCODER_KEYS if spec.get(m)}
    out.seeds = _count(spec, "seeds", 1, 1, "a number of seeds >= 1, e.g. seeds=3")
    out.folds = _count(spec, "folds", 0, 2, "a number of folds >= 2, e.g. folds=5")
    out.jobs = _count(spec, "jobs", 1, 1, "how many models to train at once, e.g. jobs=2")
    out.groups = str(spec["groups"]).strip() or None if spec.get("groups") else None
    if out.groups and not out.folds:
        raise ConfigError(
            f"ensemble groups={out.groups} keeps each group in one fold; give folds too, e.g. "
            f"folds=5 groups={out.groups}"
        )
    out.weights = str(spec.get("weights", "auto")).strip()
    if out.weights not in WEIGHINGS:
        raise ConfigError(
            f"ensemble weights={out.weights!r}: give one of {', '.join(WEIGHINGS)}, e.g. "
            "weights=equal"
        )
    _check_values(out)
    return out


def _count(spec: Mapping, key: str, default: int, least: int, what: str) -> int:
    """`spec[key]` as an int >= `least`, or the default (folds=0: off)."""
    value = spec.get(key, default)
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or (n < least and n != default):
        raise ConfigError(f"ensemble {key}={value!r}: give {what}")
    return n


def _values(given) -> list[str]:
    values = given.split(",") if isinstance(given, str) else list(given)
    return [str(v).strip() for v in values if str(v).strip()]


def _part(text: str) -> tuple[str, str]:
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ConfigError(
            f"ensemble part {text!r} is not KEY=VALUES; allowed keys: {', '.join(KEYS)} "
            f"(e.g. {EXAMPLE})"
        )
    return key.strip(), value.strip()


def _check_values(spec: EnsembleSpec) -> None:
    from mmfuse import encoders, fusion
    from mmfuse.train.presets import PRESETS

    names = encoders.available()
    for key, given, valid in (
        ("fusion", spec.fusion, fusion.available()),
        ("preset", spec.preset, PRESETS),
        *((m, spec.encoders[m], names[m]) for m in spec.encoders),
    ):
        bad = sorted(v for v in set(given or []) - set(valid) if not v.startswith("hf:"))
        if bad:
            raise ConfigError(f"ensemble {key} {bad} unknown; valid: {', '.join(valid)}")
        if given and len(set(given)) != len(given):
            raise ConfigError(f"ensemble {key} {given} repeats a value; name each once")


def selection_metric(monitor: str | None) -> str:
    """The metric a `--monitor` value names for greedy selection (None: log loss)."""
    if monitor is None:
        return "log_loss"
    name = monitor.removeprefix("val_")
    name = {"loss": "log_loss", "macro_f1": "f1_macro", "f1": "f1_macro"}.get(name, name)
    if name not in SELECTION_METRICS:
        raise ConfigError(
            f"--monitor {monitor!r} cannot choose ensemble weights; use one of "
            f"{', '.join(SELECTION_METRICS)}"
        )
    return name
