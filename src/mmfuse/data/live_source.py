"""Open what `mmfuse detect` watches: a file, a file still being written, a stream or a device.

    source = open_source("udp://127.0.0.1:5000", idle=10.0)   # or rtsp://, http://, a file
    with source.container: ...                                 # a PyAV input container

- A **file** is read to its end as it is now (`idle=0`, not `follow`).
- A **growing file** (`idle > 0` or `follow`): a recording still being written. Reads that reach
  its current end wait for more bytes; the file is finished once it has not grown for `idle`
  seconds (`follow`: never). It must be in a container that can be read before it is closed:
  MPEG-TS, Matroska or fragmented MP4; a plain MP4 keeps its index at the end, so no reader
  can use one until the recorder closes it.
- A **stream**: any URL FFmpeg opens (`rtsp://`, `udp://`, `http://`, `srt://`, ...); it ends
  after `idle` seconds without data (`follow`: waits forever).
- A **device**: `/dev/video*` (V4L2 camera) or `alsa:NAME` (e.g. `alsa:default`, a microphone).

Streams, devices and growing files are *live*: their data arrives in real time, so a reader
that falls behind must skip rather than queue (`mmfuse.infer.live`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import av

from mmfuse.errors import MmfuseError

# URL schemes handed to FFmpeg as network streams.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "tcp", "srt", "http", "https")
# How long opening a stream or device may take before it counts as unreachable.
OPEN_TIMEOUT_S = 10.0
# Default `idle` for streams and devices: this long without data and the source has ended.
STREAM_IDLE_S = 10.0
# How often a read at the end of a growing file looks for new bytes.
POLL_S = 0.05


class SourceError(MmfuseError):
    """The source cannot be opened as asked: no such file, an unreachable address, a bad flag."""


@dataclass
class LiveSource:
    """An opened source: its PyAV container, what it is, and whether its data arrives live."""

    name: str  # as the user gave it
    kind: str  # "file", "growing", "stream" or "device"
    container: av.container.InputContainer

    @property
    def live(self) -> bool:
        return self.kind != "file"


def source_kind(source: str) -> str:
    """ "stream" for a URL, "device" for a V4L2/ALSA device, else "file"."""
    scheme, sep, _ = source.partition("://")
    if sep and scheme.lower() in STREAM_SCHEMES:
        return "stream"
    if source.startswith("/dev/video") or source.startswith("alsa:"):
        return "device"
    return "file"


def open_source(
    source: str,
    *,
    idle: float | None = None,
    follow: bool = False,
    open_timeout: float | None = None,
) -> LiveSource:
    """Open `source` for one front-to-back pass; SourceError when it cannot be.

    `idle`: seconds without new data after which a growing file or stream has ended (default:
    0 for a file, i.e. read it as it is, and `STREAM_IDLE_S` for streams and devices).
    `follow`: never end on silence (a recording that pauses, a camera that reconnects).
    `open_timeout`: seconds before an unanswered stream or device is unreachable (default:
    `OPEN_TIMEOUT_S`).
    """
    open_timeout = OPEN_TIMEOUT_S if open_timeout is None else open_timeout
    kind = source_kind(source)
    if idle is not None and idle < 0:
        raise SourceError(f"--idle must be seconds >= 0, got {idle!r}")
    if kind == "file":
        path = Path(source)
        if not path.is_file():
            raise SourceError(
                f"{source}: no such file; give a video or audio file, a stream URL "
                f"({', '.join(s + '://' for s in STREAM_SCHEMES[:5])}...) or a device "
                "(/dev/video0, alsa:default)"
            )
        if not follow and not idle:
            return LiveSource(source, "file", _open(source, path=str(path)))
        reader = GrowingFile(path, idle or 0.0, follow)
        return LiveSource(source, "growing", _open(source, path=reader))
    idle = STREAM_IDLE_S if idle is None else idle
    read_timeout = None if follow or not idle else idle
    target, fmt, options = _device_target(source) if kind == "device" else (source, None, {})
    if kind == "stream":
        options = _stream_options(source)
    container = _open(
        source, path=target, format=fmt, options=options, timeout=(open_timeout, read_timeout)
    )
    return LiveSource(source, kind, container)


def _open(source: str, **kwargs) -> av.container.InputContainer:
    try:
        return av.open(kwargs.pop("path"), metadata_errors="ignore", **kwargs)
    except av.ExitError:
        raise SourceError(
            f"{source}: nothing arrived within the open timeout; check the address and that "
            "the stream or device is sending"
        ) from None
    except (av.FFmpegError, OSError) as e:
        hint = (
            "a file still being written must be MPEG-TS, Matroska or fragmented MP4"
            if isinstance(kwargs.get("path"), GrowingFile)
            else "check the path or address, and that the stream or device is up"
        )
        raise SourceError(f"{source}: cannot be opened ({e}); {hint}") from None


def _stream_options(url: str) -> dict[str, str]:
    scheme = url.partition("://")[0].lower()
    if scheme == "udp":
        # A reader busy scoring must lose old datagrams rather than fail or buffer without end:
        # FFmpeg's UDP thread keeps a fixed FIFO, and an overrun is then not an error.
        return {"overrun_nonfatal": "1", "fifo_size": "50000"}
    if scheme in ("rtsp", "rtsps"):
        return {"rtsp_transport": "tcp"}  # no lost packets mid-frame on a lossy link
    return {}


def _device_target(source: str) -> tuple[str, str, dict[str, str]]:
    if source.startswith("alsa:"):
        return source[len("alsa:") :] or "default", "alsa", {}
    return source, "v4l2", {}


class GrowingFile:
    """A file read as it is written: a read at its current end waits for more bytes.

    The end of the file is reported (an empty read) once it has not grown for `idle` seconds,
    never with `follow`. PyAV sees a non-seekable stream, so FFmpeg never seeks to the end to
    estimate a duration the file does not have yet.
    """

    def __init__(self, path: Path, idle: float, follow: bool):
        self.path = path
        self.idle = idle
        self.follow = follow
        self.file = open(path, "rb")  # noqa: SIM115 - closed with the container's last read

    def read(self, size: int = -1) -> bytes:
        if self.file.closed:
            return b""
        waited_since = time.monotonic()
        while True:
            data = self.file.read(size)
            if data:
                return data
            if not self.follow and time.monotonic() - waited_since >= self.idle:
                self.file.close()
                return b""
            time.sleep(POLL_S)


__all__ = [
    "OPEN_TIMEOUT_S",
    "STREAM_IDLE_S",
    "STREAM_SCHEMES",
    "GrowingFile",
    "LiveSource",
    "SourceError",
    "open_source",
    "source_kind",
]
