"""Running the service with uvicorn: one process, or several that each load the model.

With `--workers N` uvicorn starts N processes that each build their app through
`app_from_env`, reading the model folder and the `create_app` keywords from the environment.
Every connection goes through `protocol.LimitedH11Protocol` (read timeouts, a connection cap).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI

from mmfuse.device import set_threads
from mmfuse.errors import MmfuseError
from mmfuse.serve.app import create_app
from mmfuse.serve.protocol import PROTOCOL, ConnectionLimits, attach

# Factory mode (`--workers N`): each worker process builds its app from these.
ENV_MODEL_DIR = "MMFUSE_SERVE_MODEL_DIR"
ENV_OPTIONS = "MMFUSE_SERVE_OPTIONS"
ENV_TORCH_THREADS = "MMFUSE_SERVE_TORCH_THREADS"


def app_from_env() -> FastAPI:
    """The app for `uvicorn --factory mmfuse.serve.run:app_from_env` (one per worker process).

    Reads the model folder from $MMFUSE_SERVE_MODEL_DIR, `create_app` keywords, as a JSON
    object, from $MMFUSE_SERVE_OPTIONS and torch's thread count from
    $MMFUSE_SERVE_TORCH_THREADS (unset: torch's default).
    """
    model_dir = os.environ.get(ENV_MODEL_DIR)
    if not model_dir:
        raise RuntimeError(f"set {ENV_MODEL_DIR} to the model folder to serve")
    if os.environ.get(ENV_TORCH_THREADS):
        set_threads(int(os.environ[ENV_TORCH_THREADS]))
    return create_app(model_dir, **json.loads(os.environ.get(ENV_OPTIONS) or "{}"))


def serve(
    model_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    max_upload_bytes: int = 100 * 2**20,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    device: str = "cpu",
    torch_threads: int | None = None,
    limits: ConnectionLimits | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    log_level: str = "info",
) -> None:
    """Run the service with uvicorn until interrupted.

    One worker builds the app here, so a bad model folder fails before the port opens. With
    several, each worker process loads its own copy of the model through `app_from_env`.
    `torch_threads` sets each server process's torch thread count (None: torch's default).
    `limits`: read timeouts and the connection cap of each process (`protocol`); `api_key`
    and `cors_origins`: who may call it (`auth`).
    """
    import uvicorn

    from mmfuse.model.saved import read_saved_config

    options = {
        "max_upload_bytes": max_upload_bytes,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "device": device,
        "api_key": api_key or None,
        "cors_origins": list(cors_origins),
    }
    common = {"host": host, "port": port, "log_level": log_level, "http": PROTOCOL}
    if workers <= 1:
        set_threads(torch_threads)
        app = create_app(model_dir, **options)
        _run(uvicorn.Config(app, **common), limits or ConnectionLimits())
        return
    read_saved_config(model_dir)  # a bad folder fails once here, not in every worker
    os.environ[ENV_MODEL_DIR] = str(Path(model_dir).resolve())
    os.environ[ENV_OPTIONS] = json.dumps(options)
    if torch_threads:
        os.environ[ENV_TORCH_THREADS] = str(torch_threads)
    config = uvicorn.Config(
        "mmfuse.serve.run:app_from_env", factory=True, workers=workers, **common
    )
    _run(config, limits or ConnectionLimits())


def _run(config, limits: ConnectionLimits) -> None:
    """What `uvicorn.run` does, with `limits` given to every connection of every worker."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    attach(config, limits)
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:  # pragma: no cover - uvicorn handles the signal itself
        pass
    if config.workers <= 1 and not server.started:
        raise MmfuseError(
            f"the server could not listen on {config.host}:{config.port} (the log above says "
            "why; another process may hold the port: try another --port)"
        )
