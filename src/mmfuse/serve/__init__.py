"""Shipping a trained model: a loaded-once predictor (the HTTP service builds on it)."""

from mmfuse.serve.predictor import InputError, Prediction, Predictor

__all__ = ["InputError", "Prediction", "Predictor"]
