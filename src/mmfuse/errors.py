"""The exceptions mmfuse raises on purpose. Each message names the file or row and what to do."""

from __future__ import annotations


class MmfuseError(Exception):
    """Base class: an error a user can act on (the CLI prints it as one line, no traceback)."""


class MediaError(MmfuseError):
    """A media file cannot be used. `reason` is a short machine-readable tag."""

    # The reasons a reader may give; validation reports group by them.
    REASONS = (
        "missing",
        "unreadable",
        "truncated",
        "zero-length",
        "wrong-modality",
        "too-large",
        "too-short",
        "non-finite",  # NaN/Inf samples, or a peak no real recording has: they poison a model
    )

    def __init__(self, path, reason: str, detail: str = ""):
        if reason not in self.REASONS:
            raise ValueError(f"unknown MediaError reason {reason!r}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        message = f"{self.path}: {reason}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class ManifestError(MmfuseError):
    """A manifest cannot be read or its columns cannot be understood."""


class EncoderError(MmfuseError, ValueError):
    """A wrong encoder name, option, input shape or model path; the message says the fix."""


class CheckpointError(MmfuseError):
    """A checkpoint cannot be written or trusted. The message names the file and what to do."""

    def __init__(self, path, detail: str):
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.path}: {detail}")
