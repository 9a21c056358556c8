"""The HTTP service over a loaded-once `Predictor` (`mmfuse serve`): app, routes, service.

The app's modules need the `serve` extra; a missing package is reported here, once, with the fix.
"""

try:
    import fastapi  # noqa: F401
    import python_multipart  # noqa: F401
except ImportError as e:  # pragma: no cover - the serve extra is missing
    raise ImportError(
        f"`mmfuse serve` needs FastAPI, uvicorn and python-multipart ({e}); install them with "
        "pip install 'mmfuse[serve]'"
    ) from e
