"""Shipping a trained model: ONNX export, int8 quantisation, pruning, and before/after tables."""
