"""One-class scorers on one input's features: higher = farther from the normal reference.

Each scorer is fitted on an N×D matrix of normal features and keeps its state as named float32
tensors (`state()` / `from_state`), so a saved detector stores it in safetensors, never a pickle.

- `knn`: the mean Euclidean distance to the `k` nearest reference features (kNN on frozen
  pretrained features, as in Bergman et al. 2020, "Deep Nearest Neighbor Anomaly Detection").
  Makes no assumption about the shape of normal data; keeps every reference feature.
- `gaussian`: the Mahalanobis distance to the reference mean under a Ledoit-Wolf shrinkage
  covariance. Shrinkage keeps the D×D precision well conditioned when N is not much larger
  than D (1280-dim image features from a few hundred clips). Keeps a mean and a D×D matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmfuse.model.config import ConfigError

if TYPE_CHECKING:
    import torch

# torch and scikit-learn are imported where they are used: `mmfuse anomaly fit --help` reads
# the scorers' names from here, and should not wait for either.

SCORERS = ("knn", "gaussian")


class KnnScorer:
    """Mean distance to the `k` nearest of the reference features."""

    name = "knn"

    def __init__(self, k: int = 5):
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"knn scorer: k must be an int >= 1, got {k!r}; e.g. k=5")
        self.k = k

    def fit(self, features: np.ndarray) -> KnnScorer:
        from sklearn.neighbors import NearestNeighbors

        self.reference_ = np.asarray(features, dtype=np.float32)
        self._index = NearestNeighbors(n_neighbors=min(self.k, len(self.reference_)))
        self._index.fit(self.reference_)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        distances, _ = self._index.kneighbors(np.asarray(features, dtype=np.float32))
        return distances.mean(axis=1)  # N

    def state(self) -> dict[str, torch.Tensor]:
        import torch

        return {"reference": torch.from_numpy(self.reference_)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], k: int) -> KnnScorer:
        return cls(k).fit(state["reference"].numpy())


class GaussianScorer:
    """Mahalanobis distance to the reference mean, Ledoit-Wolf shrinkage covariance."""

    name = "gaussian"

    def fit(self, features: np.ndarray) -> GaussianScorer:
        from sklearn.covariance import LedoitWolf

        x = np.asarray(features, dtype=np.float64)
        estimate = LedoitWolf().fit(x)
        self.mean_ = estimate.location_.astype(np.float32)  # D
        self.precision_ = estimate.precision_.astype(np.float32)  # D×D
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        centred = np.asarray(features, dtype=np.float64) - self.mean_
        squared = np.einsum("nd,de,ne->n", centred, self.precision_.astype(np.float64), centred)
        return np.sqrt(np.maximum(squared, 0.0))  # N

    def state(self) -> dict[str, torch.Tensor]:
        import torch

        return {
            "mean": torch.from_numpy(self.mean_),
            "precision": torch.from_numpy(self.precision_),
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], k: int) -> GaussianScorer:
        scorer = cls()
        scorer.mean_ = state["mean"].numpy()
        scorer.precision_ = state["precision"].numpy()
        return scorer


def make_scorer(name: str, k: int = 5) -> KnnScorer | GaussianScorer:
    """A fresh scorer by name (`SCORERS`)."""
    if name == "knn":
        return KnnScorer(k)
    if name == "gaussian":
        return GaussianScorer()
    raise ConfigError(f"scorer {name!r} is not one of {', '.join(SCORERS)}; e.g. --scorer knn")


def scorer_from_state(name: str, state: dict[str, torch.Tensor], k: int):
    """A fitted scorer rebuilt from the tensors its `state()` gave."""
    make_scorer(name, k)  # the same error for an unknown name
    cls = KnnScorer if name == "knn" else GaussianScorer
    return cls.from_state(state, k)
