"""Helpers for testing a live detector over loopback, for mmfuse's tests and benchmarks and for
users checking their own setup before pointing `mmfuse detect` at a camera:

    port = free_udp_port()
    # start `mmfuse detect DIR udp://127.0.0.1:{port}` in the background, then
    wait_until_bound(port)
    # and send: ffmpeg -re -i clip.ts -c copy -f mpegts udp://127.0.0.1:{port}
"""

from __future__ import annotations

import socket
import time


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
