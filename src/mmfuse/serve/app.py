"""The HTTP service: FastAPI over one loaded-once `Predictor` (`mmfuse serve MODEL_DIR`).

    GET  /               a web page: pick files, type text, see the label and the bars
    GET  /health         {"status": "ok", "model_loaded": true, "batching": {...}}
    GET  /model          labels, inputs, encoders, fusion and saved metrics, and the limits
    POST /predict        one sample: multipart fields named by input (or by unique modality)
    POST /predict/batch  several samples: fields named `<index>.<input>`: 0.image, 1.text, ...
    GET  /docs           the OpenAPI docs (FastAPI's)

The routes (`routes`) take the `Service` (`service`: model, preprocessing threads, batcher)
through a dependency; `uploads` parses the multipart body; bad input is a 4xx in the JSON
shape of `errors`, and only a bug gives a 500. `auth` adds the optional API key and CORS;
`run` starts uvicorn with the connection limits of `protocol` (read timeouts, a connection cap).

    curl -F image=@cat.png -F audio=@meow.wav -F text="a cat" http://127.0.0.1:8000/predict
    curl -F 0.image=@a.png -F 1.text="a dog" http://127.0.0.1:8000/predict/batch
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from mmfuse.infer.predictor import Predictor
from mmfuse.serve import openapi, routes
from mmfuse.serve.auth import add_access_control
from mmfuse.serve.errors import add_error_handlers
from mmfuse.serve.service import Service


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    await app.state.service.close()


def create_app(
    model_dir: str | os.PathLike,
    *,
    max_upload_bytes: int = 100 * 2**20,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    device: str = "cpu",
    preprocess_threads: int | None = None,
    upload_dir: str | os.PathLike | None = None,
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """The FastAPI app serving the model in `model_dir`, loaded here, once.

    `max_upload_bytes` caps each request body; `max_batch` and `max_wait_ms` tune the dynamic
    batcher; `preprocess_threads` (default: the core count, at least 2) decode uploads;
    `upload_dir` holds the temporary upload files (default: the system temp folder).
    `api_key` makes every route but `/health` and the page need `Authorization: Bearer <key>`;
    `cors_origins` lets browsers on those origins call the service (see `auth`).
    `app.state.service` holds the predictor and the batcher (its `stats` count forwards).
    """
    service = Service(
        Predictor(model_dir, device=device),
        max_upload_bytes=max_upload_bytes,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        preprocess_threads=preprocess_threads,
        upload_dir=upload_dir,
    )
    app = FastAPI(
        title=f"mmfuse: {Path(model_dir).resolve().name}",
        description=openapi.description(service),
        version=service.version,
        lifespan=lifespan,
    )
    app.state.service = service
    add_error_handlers(app)
    app.include_router(routes.router)
    openapi.add_forms(app, service)
    add_access_control(app, api_key, cors_origins)
    return app
