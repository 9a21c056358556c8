"""POST each event line to a URL, from a thread of its own, never stopping the detector.

A slow or dead endpoint must not hold up scoring (the detector would fall behind and skip
windows), so posts go through a small queue to one sender thread, each with a short timeout.
The first failure is reported on stderr, later ones only counted; a full queue drops events.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import urllib.error
import urllib.request
from urllib.parse import urlparse

from mmfuse.errors import MmfuseError

TIMEOUT_S = 2.0
QUEUE = 64


class WebhookError(MmfuseError):
    """The --webhook value is not an http(s) URL."""


class Webhook:
    def __init__(self, url: str, timeout: float = TIMEOUT_S, log=None):
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise WebhookError(f"--webhook {url!r} is not an http:// or https:// URL")
        self.url, self.timeout = url, timeout
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.failed = self.dropped = self.sent = 0
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE)
        self.thread = threading.Thread(target=self._send_all, name="webhook", daemon=True)
        self.thread.start()

    def post(self, event: dict) -> None:
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            if not self.dropped:
                self.log(f"webhook {self.url}: too slow, events dropped (they are in the output)")
            self.dropped += 1

    def close(self) -> None:
        """Send what is queued (each post within its timeout), then stop the thread."""
        self.queue.put(None)
        self.thread.join(timeout=self.timeout * (self.queue.qsize() + 2))

    def _send_all(self) -> None:
        while (event := self.queue.get()) is not None:
            self._send(event)

    def _send(self, event: dict) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(event).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            self.sent += 1
        except (urllib.error.URLError, OSError, ValueError) as e:
            if not self.failed:
                self.log(
                    f"webhook {self.url}: POST failed ({getattr(e, 'reason', e)}); detection "
                    "goes on and events are still written; later failures are only counted"
                )
            self.failed += 1


__all__ = ["Webhook", "WebhookError"]
