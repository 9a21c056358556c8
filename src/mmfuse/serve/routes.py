"""The routes: each reads its request, hands it to the `Service` it depends on, and answers."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from mmfuse.infer.predictor import Prediction
from mmfuse.serve.openapi import ERROR_RESPONSES
from mmfuse.serve.page import PAGE
from mmfuse.serve.service import ServiceDep
from mmfuse.serve.uploads import MAX_BATCH_SAMPLES, read_upload

router = APIRouter()


class TaskResult(BaseModel):
    label: str
    probabilities: dict[str, float]


class PredictionResult(BaseModel):
    label: str
    probabilities: dict[str, float]
    modalities_used: list[str]
    modality_weights: dict[str, float] | None
    tasks: dict[str, TaskResult]
    latency_ms: float


class BatchResult(BaseModel):
    results: list[PredictionResult]
    latency_ms: float


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@router.get("/health", summary="Liveness, and what the batcher has done")
async def health(service: ServiceDep) -> dict:
    return {
        "status": "ok",
        "model_loaded": service.predictor is not None,
        "batching": service.batcher.stats.to_dict(),
    }


@router.get("/model", summary="The model's labels, inputs, fusion and metrics")
async def model(service: ServiceDep) -> dict:
    return service.describe()


@router.post(
    "/predict",
    summary="Predict one sample from any subset of the model's inputs",
    description=(
        "multipart/form-data: one field per input, named by input (or by modality when the "
        "model has a single input of it): a file for image, audio and video inputs, a "
        "plain value for text. Leave out the inputs the sample lacks; give at least one."
    ),
    response_model=PredictionResult,
    responses=ERROR_RESPONSES,
)
async def predict(request: Request, service: ServiceDep) -> dict:
    start = time.perf_counter()
    upload = await read_upload(
        request, service.input_of, service.max_upload_bytes, service.upload_dir
    )
    (result,) = await service.predict(upload)
    return _result(result, start)


@router.post(
    "/predict/batch",
    summary="Predict several samples in one request",
    description=(
        "multipart/form-data: fields named `<index>.<input>` with indexes 0, 1, ..., N-1 "
        f"(N ≤ {MAX_BATCH_SAMPLES}), e.g. `0.image`, `0.text`, `1.audio`; each sample "
        "gives any subset of the inputs (at least one), as in /predict. The answer lists "
        "the results in index order. A bad file fails the whole request, naming its field "
        "(e.g. `1.image`)."
    ),
    response_model=BatchResult,
    responses=ERROR_RESPONSES,
)
async def predict_batch(request: Request, service: ServiceDep) -> dict:
    start = time.perf_counter()
    upload = await read_upload(
        request, service.batch_input_of, service.max_upload_bytes, service.upload_dir
    )
    results = await service.predict(upload, batch=True)
    latency = (time.perf_counter() - start) * 1000
    return {"results": [_result(r, start) for r in results], "latency_ms": latency}


def _result(prediction: Prediction, start: float) -> dict:
    out = prediction.to_dict()
    out["latency_ms"] = (time.perf_counter() - start) * 1000
    return out
