"""Prediction: the one path from preprocessed samples to class probabilities, and what is built
on it (a loaded-once `Predictor`, streamed batch prediction, event detection)."""

from mmfuse.infer.predictor import InputError, Prediction, Predictor

__all__ = ["InputError", "Prediction", "Predictor"]
