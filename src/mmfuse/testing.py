"""Helpers for testing a live detector over loopback, for mmfuse's tests and benchmarks and for
users checking their own setup before pointing `mmfuse detect` at a camera:

    port = free_udp_port()
    # start `mmfuse detect DIR udp://127.0.0.1:{port}` in the background, then
    wait_until_bound(port)
    # and send: ffmpeg -re -i clip.ts -c copy -f mpegts udp://127.0.0.1:{port}

and `cut_windows`, to fit a detector on normal footage of the camera it will watch: windows of
a recording as clips of their own, so that it learns what the stream's windows look like.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_bound(port: int, timeout: float = 20.0, poll: float = 0.05) -> None:
    """Return once something listens on UDP `port` of 127.0.0.1 (binding it ourselves then
    fails); TimeoutError after `timeout` seconds: a sender started earlier would send into
    nothing, and UDP drops what nobody reads."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(poll)
    raise TimeoutError(f"nothing listens on udp port {port} after {timeout:.0f} s")


def cut_windows(
    recording: str | Path,
    duration: float,
    out_dir: str | Path,
    *,
    window: float,
    stride: float,
    first: float = 0.0,
) -> list[Path]:
    """Every `window`-second stretch of `recording`, `stride` seconds apart from `first`, as a
    clip of its own holding what a live window of it holds: the pictures copied (exact where
    every frame is a key frame, as in `write_scene`'s recordings), the sound decoded and cut to
    the sample, each stream from its own start (`ffmpeg -i ... -ss`, FLAC in Matroska). Copying
    the sound instead keeps whole AAC frames: 40 ms past the window, which moved the anomaly
    detector's audio score of a normal window by 0.8 of its standard deviation on average."""
    out_dir, recording, clips = Path(out_dir), Path(recording), []
    start = first
    while start + window <= duration + 1e-9:
        clip = out_dir / f"{recording.stem}-{start:08.2f}.mkv"
        cut = ["-i", str(recording), "-ss", f"{start:g}", "-t", f"{window:g}"]
        cut += ["-c:v", "copy", "-c:a", "flac"]
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *cut, str(clip)], check=True)
        clips.append(clip)
        start += stride
    return clips
