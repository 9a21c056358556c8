"""What the `mmfuse anomaly` commands share: the detector folder argument and its loading."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmfuse.cli.common import UsageError, resolve_device


def add_detector_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("detector_dir", help="detector folder written by `mmfuse anomaly fit --out`")


def load_detector(path: str, device: str | None):
    """The saved detector, or a UsageError when `path` is not a detector folder."""
    from mmfuse.anomaly import AnomalyDetector
    from mmfuse.anomaly.folder import CONFIG

    if not (Path(path) / CONFIG).is_file():
        raise UsageError(
            f"{path} is not an anomaly detector folder (no {CONFIG}); give the folder that "
            "`mmfuse anomaly fit --out` wrote"
        )
    return AnomalyDetector.load(path, device=resolve_device(device, "cpu"))
