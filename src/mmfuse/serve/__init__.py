"""Shipping a trained model: a loaded-once predictor, the HTTP service, ONNX export and
compression, streamed batch prediction and event detection on long videos."""

from mmfuse.serve.predictor import InputError, Prediction, Predictor

__all__ = ["InputError", "Prediction", "Predictor"]
