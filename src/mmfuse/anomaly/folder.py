"""A saved anomaly detector: a folder that loads without unpickling anything.

    detector/
        detector.json          format, mmfuse version, the parameters, each input's encoder
                               config, each input's held-out mean/std, the threshold, notes
        detector.safetensors   `encoders.<input>.<weight>`: the frozen encoders' weights;
                               `scorers.<input>.<tensor>`: the fitted statistics (knn: the
                               reference features; gaussian: the mean and the precision matrix)
        metrics.json, report.md, *.png   from `mmfuse anomaly evaluate --out`, when run

The encoders' weights are saved rather than rebuilt from the installed pretrained packages:
the reference statistics are only valid for the exact weights that made the features, and a
package upgrade that changed them would shift every score silently. So the folder is the whole
detector, and loads without the packages that ship the weights (like `model/saved.py`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmfuse._version import __version__
from mmfuse.anomaly.features import build_encoders
from mmfuse.anomaly.scorers import scorer_from_state
from mmfuse.encoders.base import without_pretrained_weights
from mmfuse.errors import CheckpointError, MmfuseError
from mmfuse.model.config import InputConfig
from mmfuse.model.saved import read_folder_json

FORMAT = 1
CONFIG, WEIGHTS = "detector.json", "detector.safetensors"
# Parameters that describe this machine or run, not the detector: not saved.
_LOCAL_PARAMS = ("cache_dir", "device", "verbose", "workers")


def save_detector(detector, path: str | os.PathLike) -> Path:
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, encoder in detector.encoders_.items():
        for key, value in encoder.state_dict().items():
            tensors[f"encoders.{name}.{key}"] = value.detach().cpu().contiguous()
    for name, scorer in detector.scorers_.items():
        for key, value in scorer.state().items():
            tensors[f"scorers.{name}.{key}"] = value.contiguous()
    params = {k: v for k, v in detector.get_params().items() if k not in _LOCAL_PARAMS}
    saved = {
        "format": FORMAT,
        "mmfuse_version": __version__,
        "params": params,
        "inputs": {n: s.to_dict() for n, s in detector.inputs_.items()},
        "stats": detector.stats_,
        "threshold": detector.threshold_,
        "n_reference": detector.n_reference_,
        "n_held_out": detector.n_held_out_,
        "notes": detector.notes_,
    }
    try:
        path.mkdir(parents=True, exist_ok=True)
        save_file(tensors, path / WEIGHTS, metadata={"format": str(FORMAT)})
        (path / CONFIG).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise CheckpointError(
            path, f"the detector folder could not be written ({e.strerror or e}); save elsewhere"
        ) from None
    return path


def read_detector_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    file = path / CONFIG
    saved = read_folder_json(
        path,
        CONFIG,
        "an anomaly detector folder",
        "`mmfuse anomaly fit --out` or `AnomalyDetector.save`",
    )
    fmt = saved.get("format") if isinstance(saved, dict) else None
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise CheckpointError(
            file,
            f"has detector format {fmt!r}; this mmfuse {__version__} reads format {FORMAT}: "
            "upgrade mmfuse (pip install -U mmfuse) or refit",
        )
    return saved


def load_detector(cls, path: str | os.PathLike, device: str = "cpu"):
    path = Path(path)
    saved = read_detector_config(path)
    try:
        detector = cls(**saved["params"], device=device)
        inputs = {n: InputConfig.from_dict(d) for n, d in saved["inputs"].items()}
        with without_pretrained_weights():
            encoders = build_encoders(inputs)
        tensors = load_file(path / WEIGHTS)
        for name, encoder in encoders.items():
            prefix = f"encoders.{name}."
            encoder.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
        scorers = {}
        for name in inputs:
            prefix = f"scorers.{name}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            scorers[name] = scorer_from_state(detector.scorer, state, detector.k)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            path / WEIGHTS, f"cannot be read as safetensors ({e}); copy it again, or refit"
        ) from None
    except (MmfuseError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            path,
            f"holds a detector that cannot be rebuilt ({e}); it was edited or damaged: "
            "restore the folder or refit",
        ) from None
    detector.inputs_, detector.encoders_, detector.scorers_ = inputs, encoders, scorers
    detector.stats_ = saved["stats"]
    detector.threshold_ = float(saved["threshold"])
    detector.n_reference_ = saved["n_reference"]
    detector.n_held_out_ = saved["n_held_out"]
    detector.notes_ = list(saved["notes"])
    return detector
