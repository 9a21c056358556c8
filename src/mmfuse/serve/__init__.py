"""The HTTP service over a loaded-once `Predictor` (`mmfuse serve`)."""
