"""The service on a free loopback port, in a thread, for tests that need a real socket."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn


@contextlib.contextmanager
def serving(app, *, lifespan: str = "off", limits=None):
    """Run `app` under uvicorn on 127.0.0.1 (behind the connection limits when given); yields
    the bound (host, port) and stops the server after."""
    from mmfuse.serve.protocol import PROTOCOL, attach

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    extra = {"http": PROTOCOL} if limits is not None else {}
    config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, **extra)
    if limits is not None:
        attach(config, limits)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
