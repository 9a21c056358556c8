"""One-class anomaly detection on frozen multimodal features, fitted on normal samples only.

`AnomalyDetector` (detector.py) is the front door; `scorers` holds the one-class scorers,
`features` the frozen per-input features (through the classifier's feature cache), `folder`
the saved detector, `evaluation` the metrics and report.
"""

from typing import TYPE_CHECKING

from mmfuse.lazy import lazy_names

__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "mmfuse.anomaly.detector": ["AnomalyDetector", "fuse_scores"],
        "mmfuse.anomaly.scorers": ["SCORERS"],
    },
)

if TYPE_CHECKING:
    from mmfuse.anomaly.detector import AnomalyDetector, fuse_scores
    from mmfuse.anomaly.scorers import SCORERS

__all__ = ["SCORERS", "AnomalyDetector", "fuse_scores"]
