"""The HTTP service: `mmfuse serve MODEL_DIR`, FastAPI over one loaded-once `Predictor`.

    GET  /               a web page: pick files, type text, see the label and the bars
    GET  /health         {"status": "ok", "model_loaded": true, "batching": {...}}
    GET  /model          labels, inputs, encoders, fusion and saved metrics, and the limits
    POST /predict        one sample: multipart fields named by input (or by unique modality)
    POST /predict/batch  several samples: fields named `<index>.<input>`: 0.image, 1.text, ...
    GET  /docs           the OpenAPI docs (FastAPI's)

A request's body is parsed as it streams (uploads held in memory, spilled to disk past 1 MiB);
in a thread pool each file is written to a temporary file keeping its suffix (so readers can
sniff), read by the same `SampleLoader` as evaluation, and deleted. The tensors then go to a
`DynamicBatcher`, so concurrent requests share one forward pass. Bad input is a 4xx with
`{"error": {"field", "reason", "message"}}` (`ERRORS` lists them); only a bug gives a 500, in
the same JSON shape.

    curl -F image=@cat.png -F audio=@meow.wav -F text="a cat" http://127.0.0.1:8000/predict
    curl -F 0.image=@a.png -F 1.text="a dog" http://127.0.0.1:8000/predict/batch
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect
except ImportError as e:  # pragma: no cover - the serve extra is missing
    raise ImportError(
        f"`mmfuse serve` needs FastAPI, uvicorn and python-multipart ({e}); install them with "
        "pip install 'mmfuse[serve]'"
    ) from e

from mmfuse.errors import MediaError, MmfuseError
from mmfuse.infer.predictor import InputError, Prediction, Predictor
from mmfuse.serve.batcher import DynamicBatcher
from mmfuse.serve.page import PAGE

# Text fields (and .txt uploads for text inputs) larger than this are refused with a 413.
MAX_TEXT_BYTES = 1 << 20
# A file part is held in memory up to this size, and spilled to a temporary file beyond it.
SPOOL_BYTES = 1 << 20
# Samples one /predict/batch request may carry; each still rides the shared batcher.
MAX_BATCH_SAMPLES = 256
# Factory mode (`--workers N`): each worker process builds its app from these.
ENV_MODEL_DIR = "MMFUSE_SERVE_MODEL_DIR"
ENV_OPTIONS = "MMFUSE_SERVE_OPTIONS"
ENV_TORCH_THREADS = "MMFUSE_SERVE_TORCH_THREADS"

# status, reason, when: the 4xx answers, for the OpenAPI description and the README.
ERRORS = (
    (400, "bad-multipart", "the body is not valid multipart/form-data (cut short, no boundary)"),
    (400, "duplicate-field", "one input given twice for the same sample"),
    (413, "too-large", "the body is over max_upload_bytes, or a text over 1 MiB"),
    (415, "unsupported-content-type", "the request is not multipart/form-data"),
    (415, "wrong-modality", "the file holds another modality (a WAV sent as image)"),
    (422, "unknown-field", "a field the model does not take (the message lists those it does)"),
    (422, "missing-input", "no input at all (field null), or a batch index with none"),
    (422, "not-a-file", "a plain form value where a file upload is expected"),
    (422, "zero-length", "an empty file"),
    (422, "unreadable", "a file that cannot be decoded (also truncated, too-short)"),
    (422, "too-many-samples", f"a batch of more than {MAX_BATCH_SAMPLES} samples"),
    (500, "internal", "a bug in the server; the log has the traceback"),
)
# MediaError reasons whose status is not 422.
_MEDIA_STATUS = {"wrong-modality": 415, "too-large": 413}
_BATCH_FIELD = re.compile(r"(\d+)\.(.+)")
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")


# ---------------------------------------------------------------------------------- errors
class RequestError(Exception):
    """A 4xx answer: the field at fault (None for the whole request), a reason tag, a message."""

    def __init__(self, status: int, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.field = field


def error_response(status: int, reason: str, message: str, field: str | None = None):
    body = {"error": {"field": field, "reason": reason, "message": message}}
    return JSONResponse(body, status_code=status)


# ---------------------------------------------------------------------------------- schemas
class ErrorDetail(BaseModel):
    field: str | None
    reason: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


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


ERROR_RESPONSES = {
    status: {
        "model": ErrorBody,
        "description": "; ".join(f"{r}: {w}" for s, r, w in ERRORS if s == status),
    }
    for status in sorted({s for s, _, _ in ERRORS})
}


# ---------------------------------------------------------------------------------- uploads
@dataclass
class Part:
    """One multipart field: its bytes in `data`, or in the file `path` once over SPOOL_BYTES."""

    field: str  # the name as sent
    key: Hashable  # what the route resolved it to (an input name, or (index, input name))
    filename: str | None  # None for a plain form value
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    path: Path | None = None
    handle: BinaryIO | None = None

    @property
    def suffix(self) -> str:
        """The original file name's suffix, when it looks like one (".png", ".wav", ...)."""
        suffix = Path(self.filename or "").suffix
        return suffix if _SAFE_SUFFIX.fullmatch(suffix) else ""


def temporary_file(suffix: str, upload_dir) -> BinaryIO:
    """An open, named file that outlives its handle: whoever made it deletes it."""
    return tempfile.NamedTemporaryFile(
        prefix="mmfuse-upload-", suffix=suffix, dir=upload_dir, delete=False
    )


class Upload:
    """The parts of one request; `close` deletes the files of the parts that were spilled."""

    def __init__(self) -> None:
        self.parts: list[Part] = []

    def close(self) -> None:
        for part in self.parts:
            if part.handle is not None:
                part.handle.close()
            if part.path is not None:
                part.path.unlink(missing_ok=True)


class _PartCollector:
    """python-multipart callbacks: field names checked as soon as a part's headers end."""

    def __init__(self, upload: Upload, resolve: Callable[[str], Hashable], upload_dir):
        self.upload = upload
        self.resolve = resolve
        self.upload_dir = upload_dir
        self.current: Part | None = None
        self.keys: dict[Hashable, str] = {}
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._headers, self.current = {}, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise RequestError(400, "bad-multipart", "a part has no name in Content-Disposition")
        name = options[b"name"].decode("utf-8", "replace")
        key = self.resolve(name)
        if key in self.keys:
            raise RequestError(
                400,
                "duplicate-field",
                f"{name!r} gives the same input as {self.keys[key]!r}; send each input once",
                name,
            )
        self.keys[key] = name
        filename = None
        if b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
        self.current = Part(name, key, filename)
        self.upload.parts.append(self.current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.current
        part.size += end - start
        if part.filename is None and part.size > MAX_TEXT_BYTES:
            raise RequestError(
                413,
                "too-large",
                f"the value is over {MAX_TEXT_BYTES} bytes; send a shorter text",
                part.field,
            )
        if part.handle is None and part.size > SPOOL_BYTES:
            # A large file goes to disk as it streams; small ones are written by the
            # preprocessing thread, keeping file-system calls off the event loop.
            part.handle = temporary_file(part.suffix, self.upload_dir)
            part.path = Path(part.handle.name)
            part.handle.write(part.data)
            part.data = bytearray()
        if part.handle is not None:
            part.handle.write(data[start:end])
        else:
            part.data += data[start:end]

    def on_part_end(self) -> None:
        if self.current is not None and self.current.handle is not None:
            self.current.handle.close()
            self.current.handle = None
        self.current = None

    def on_end(self) -> None:
        self.ended = True


async def read_upload(
    request: Request, resolve: Callable[[str], Hashable], max_bytes: int, upload_dir=None
) -> Upload:
    """Stream a multipart body into an `Upload`, refusing it past `max_bytes` at any point.

    `resolve(field name)` returns the key the field stands for or raises `RequestError`
    (unknown field); it runs before the part's data is read, so a bad name costs nothing.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise RequestError(
            415,
            "unsupported-content-type",
            f"the request's Content-Type is {shown}; send multipart/form-data (curl -F, or a "
            "FormData body with fetch)",
        )
    if not params.get(b"boundary"):
        raise RequestError(400, "bad-multipart", "the multipart Content-Type has no boundary")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise RequestError(413, "too-large", _too_large(max_bytes, int(length)))

    upload = Upload()
    collector = _PartCollector(upload, resolve, upload_dir)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            if received + len(chunk) > max_bytes:
                # Parse up to the limit, to name the field that crosses it.
                parser.write(chunk[: max_bytes - received])
                where = collector.current.field if collector.current else None
                raise RequestError(413, "too-large", _too_large(max_bytes), where)
            received += len(chunk)
            parser.write(chunk)
        parser.finalize()
        if not collector.ended:
            raise RequestError(
                400, "bad-multipart", "the body ends before the closing multipart boundary"
            )
    except MultipartParseError as e:
        upload.close()
        raise RequestError(400, "bad-multipart", f"the multipart body is malformed: {e}") from None
    except ClientDisconnect:
        upload.close()
        raise RequestError(400, "bad-multipart", "the client left before the body ended") from None
    except BaseException:
        upload.close()
        raise
    return upload


def _too_large(limit: int, size: int | None = None) -> str:
    shown = f" ({size} bytes)" if size is not None else ""
    return (
        f"the request body{shown} is over the {limit}-byte limit; send smaller files, or start "
        "the server with a larger --max-upload-mb"
    )


# ---------------------------------------------------------------------------------- service
@dataclass
class Sample:
    """One sample of a request: texts and file parts, keyed by input name."""

    where: str  # "" for /predict, "<index>." for /predict/batch
    texts: dict[str, str] = field(default_factory=dict)
    files: dict[str, Part] = field(default_factory=dict)


class Service:
    """The loaded model, the preprocessing threads and the batcher behind the routes."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_upload_bytes: int,
        max_batch: int,
        max_wait_ms: float,
        preprocess_threads: int | None = None,
        upload_dir: str | os.PathLike | None = None,
    ):
        if max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
        self.predictor = predictor
        self.max_upload_bytes = max_upload_bytes
        self.upload_dir = upload_dir
        self.batcher = DynamicBatcher(self._forward, max_batch=max_batch, max_wait_ms=max_wait_ms)
        threads = preprocess_threads or max(2, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="mmfuse-preprocess")

    def _forward(self, samples: list[dict]) -> list[Prediction]:
        return self.predictor.predict_tensors(samples)

    # -------------------------------------------------------------- field names → inputs
    def input_of(self, name: str) -> str:
        try:
            return self.predictor.resolve(name)
        except InputError:
            raise RequestError(
                422,
                "unknown-field",
                f"{name!r} is not an input of this model; {self._fields()}",
                name,
            ) from None

    def batch_input_of(self, name: str) -> tuple[int, str]:
        match = _BATCH_FIELD.fullmatch(name)
        if match is None:
            raise RequestError(
                422,
                "unknown-field",
                f"batch fields are named <index>.<input>, e.g. 0.{self.predictor.names[0]}; got "
                f"{name!r}; {self._fields()}",
                name,
            )
        index = int(match.group(1))
        if index >= MAX_BATCH_SAMPLES:
            raise RequestError(
                422,
                "too-many-samples",
                f"sample index {index} is past the {MAX_BATCH_SAMPLES}-sample limit of one batch "
                "request; split it into several requests",
                name,
            )
        try:
            return index, self.predictor.resolve(match.group(2))
        except InputError:
            raise RequestError(
                422,
                "unknown-field",
                f"{match.group(2)!r} is not an input of this model; {self._fields()}",
                name,
            ) from None

    def _fields(self) -> str:
        text = f"its inputs are {', '.join(self.predictor.names)}"
        extra = sorted(set(self.predictor.aliases) - set(self.predictor.names))
        return text + (f" (or by modality: {', '.join(extra)})" if extra else "")

    # -------------------------------------------------------------- parts → samples
    def sample_of(self, parts: list[Part], where: str = "") -> Sample:
        """The values of one sample's parts (keyed by input name), checked per modality."""
        sample = Sample(where)
        for part in parts:
            name = part.key[1] if isinstance(part.key, tuple) else part.key
            if self.predictor.modalities[name] == "text":
                text = self._text_of(part)
                if text != "":  # an empty text box is an absent input, as in a manifest
                    sample.texts[name] = text
            elif part.filename is None:
                raise RequestError(
                    422,
                    "not-a-file",
                    f"{self.predictor.modalities[name]} input {name!r} takes a file upload, got "
                    "a plain form value; send it as a file (curl -F field=@path)",
                    part.field,
                )
            elif part.filename == "" and part.size == 0:
                continue  # an HTML file input left empty
            else:
                sample.files[name] = part
        if not sample.texts and not sample.files:
            index = where.rstrip(".") or None
            raise RequestError(
                422,
                "missing-input",
                f"{'sample ' + index if index else 'the request'} has no input; give at least "
                f"one of {', '.join(self.predictor.names)}",
                index,
            )
        return sample

    def _text_of(self, part: Part) -> str:
        if part.size > MAX_TEXT_BYTES:  # a .txt upload for a text input; values stop earlier
            raise RequestError(
                413, "too-large", f"the text is over {MAX_TEXT_BYTES} bytes", part.field
            )
        raw = part.path.read_bytes() if part.path is not None else bytes(part.data)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(
                422, "unreadable", f"the text is not valid UTF-8 ({e}); send UTF-8", part.field
            ) from None

    # -------------------------------------------------------------- prediction
    async def preprocess(self, samples: list[Sample]) -> list[dict]:
        """Preprocess every sample in the thread pool; the first bad one (in order) raises."""
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self.pool, self._preprocess, s) for s in samples]
        done = await asyncio.gather(*jobs, return_exceptions=True)
        for result in done:
            if isinstance(result, BaseException):
                raise result
        return done

    def _preprocess(self, sample: Sample) -> dict:
        """In a pool thread: write the sample's in-memory files to temporary files (keeping
        their suffix, so readers can sniff), preprocess as evaluation does, delete them."""
        values: dict[str, str] = dict(sample.texts)
        written: list[Part] = []
        try:
            for name, part in sample.files.items():
                if part.path is None:
                    with temporary_file(part.suffix, self.upload_dir) as handle:
                        part.path = Path(handle.name)
                        written.append(part)
                        handle.write(part.data)
                values[name] = str(part.path)
            return self.predictor.preprocess(values)
        except MediaError as e:
            raise self._media_error(e, sample) from None
        except InputError as e:
            raise RequestError(422, "unknown-field", str(e)) from None
        finally:
            for part in written:
                part.path.unlink(missing_ok=True)
                part.path = None

    def _media_error(self, e: MediaError, sample: Sample) -> RequestError:
        part = next((p for p in sample.files.values() if str(p.path) == e.path), None)
        if part is None:
            return RequestError(_MEDIA_STATUS.get(e.reason, 422), e.reason, str(e))
        detail = (e.detail or e.reason).replace(e.path, part.filename or "the upload")
        message = f"{part.filename!r}: {e.reason}: {detail}"
        if e.reason == "wrong-modality":
            name = part.key[1] if isinstance(part.key, tuple) else part.key
            message += f"; the {part.field!r} field takes {self.predictor.modalities[name]} files"
        return RequestError(_MEDIA_STATUS.get(e.reason, 422), e.reason, message, part.field)

    async def predict(self, upload: Upload, samples: list[Sample]) -> list[Prediction]:
        """Preprocess (then delete any spilled uploads) and run the samples through the batcher."""
        try:
            prepared = await self.preprocess(samples)
        finally:
            upload.close()
        return list(await asyncio.gather(*(self.batcher.submit(p) for p in prepared)))

    async def close(self) -> None:
        await self.batcher.close()
        self.pool.shutdown(wait=False)


# ---------------------------------------------------------------------------------- app
def create_app(
    model_dir: str | os.PathLike,
    *,
    max_upload_bytes: int = 100 * 2**20,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    device: str = "cpu",
    preprocess_threads: int | None = None,
    upload_dir: str | os.PathLike | None = None,
) -> FastAPI:
    """The FastAPI app serving the model in `model_dir`, loaded here, once.

    `max_upload_bytes` caps each request body; `max_batch` and `max_wait_ms` tune the dynamic
    batcher; `preprocess_threads` (default: the core count, at least 2) decode uploads;
    `upload_dir` holds the temporary upload files (default: the system temp folder).
    `app.state.service` holds the predictor and the batcher (its `stats` count forwards).
    """
    predictor = Predictor(model_dir, device=device)
    service = Service(
        predictor,
        max_upload_bytes=max_upload_bytes,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        preprocess_threads=preprocess_threads,
        upload_dir=upload_dir,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await service.close()

    app = FastAPI(
        title=f"mmfuse: {Path(model_dir).resolve().name}",
        description=_description(predictor, max_upload_bytes),
        version=str(predictor.saved.get("mmfuse_version") or "0"),
        lifespan=lifespan,
    )
    app.state.service = service
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/health", summary="Liveness, and what the batcher has done")
    async def health() -> dict:
        return {
            "status": "ok",
            "model_loaded": service.predictor is not None,
            "batching": service.batcher.stats.to_dict(),
        }

    @app.get("/model", summary="The model's labels, inputs, fusion and metrics")
    async def model() -> dict:
        return {
            **predictor.describe(),
            "limits": {
                "max_upload_bytes": max_upload_bytes,
                "max_batch": max_batch,
                "max_wait_ms": max_wait_ms,
                "max_batch_samples": MAX_BATCH_SAMPLES,
            },
        }

    @app.post(
        "/predict",
        summary="Predict one sample from any subset of the model's inputs",
        description=(
            "multipart/form-data: one field per input, named by input (or by modality when the "
            "model has a single input of it): a file for image, audio and video inputs, a "
            "plain value for text. Leave out the inputs the sample lacks; give at least one."
        ),
        response_model=PredictionResult,
        responses=ERROR_RESPONSES,
        openapi_extra=_form_schema(predictor, [""]),
    )
    async def predict(request: Request) -> dict:
        start = time.perf_counter()
        upload = await read_upload(request, service.input_of, max_upload_bytes, upload_dir)
        try:
            sample = service.sample_of(upload.parts)
        except BaseException:
            upload.close()
            raise
        (result,) = await service.predict(upload, [sample])
        return _result(result, start)

    @app.post(
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
        openapi_extra=_form_schema(predictor, ["0.", "1."]),
    )
    async def predict_batch(request: Request) -> dict:
        start = time.perf_counter()
        upload = await read_upload(request, service.batch_input_of, max_upload_bytes, upload_dir)
        try:
            samples = _batch_samples(service, upload)
        except BaseException:
            upload.close()
            raise
        results = await service.predict(upload, samples)
        latency = (time.perf_counter() - start) * 1000
        return {"results": [_result(r, start) for r in results], "latency_ms": latency}

    return app


def _batch_samples(service: Service, upload: Upload) -> list[Sample]:
    """Group `<index>.<input>` parts into samples 0..N-1; a gap is a missing sample."""
    by_index: dict[int, list[Part]] = {}
    for part in upload.parts:
        by_index.setdefault(part.key[0], []).append(part)
    if not by_index:
        raise RequestError(
            422,
            "missing-input",
            f"the request has no samples; send fields such as 0.{service.predictor.names[0]}",
        )
    return [service.sample_of(by_index.get(i, []), f"{i}.") for i in range(max(by_index) + 1)]


def _result(prediction: Prediction, start: float) -> dict:
    out = prediction.to_dict()
    out["latency_ms"] = (time.perf_counter() - start) * 1000
    return out


def _form_schema(predictor: Predictor, prefixes: list[str]) -> dict:
    """The multipart request body in OpenAPI, so /docs shows a field (or file picker) per input."""
    properties = {}
    for prefix in prefixes:
        for name in predictor.names:
            modality = predictor.modalities[name]
            if modality == "text":
                properties[prefix + name] = {"type": "string", "description": f"{name} (text)"}
            else:
                properties[prefix + name] = {
                    "type": "string",
                    "format": "binary",
                    "description": f"{name} ({modality} file)",
                }
    schema = {"type": "object", "properties": properties}
    body = {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    return {"requestBody": body}


def _description(predictor: Predictor, max_upload_bytes: int) -> str:
    inputs = ", ".join(f"`{n}` ({predictor.modalities[n]})" for n in predictor.names)
    classes = "; ".join(f"{t}: {', '.join(c)}" for t, c in predictor.labels.items())
    rows = "\n".join(f"| {s} | `{r}` | {w} |" for s, r, w in ERRORS)
    return (
        f"Inputs: {inputs}. Classes: {classes}. Request bodies up to {max_upload_bytes} bytes.\n\n"
        "`POST /predict` takes one sample as multipart fields named by input; "
        "`POST /predict/batch` takes several, as fields named `<index>.<input>` "
        '(`0.image`, `0.text`, `1.audio`, ...) and answers `{"results": [...]}` in index '
        "order.\n\n"
        'Errors are `{"error": {"field": ..., "reason": ..., "message": ...}}`, with `field` the '
        "form field at fault (null when it is the whole request):\n\n"
        "| status | reason | when |\n|---|---|---|\n" + rows
    )


def _add_error_handlers(app: FastAPI) -> None:
    async def request_error(request: Request, e: RequestError):
        return error_response(e.status, e.reason, e.message, e.field)

    async def http_error(request: Request, e: StarletteHTTPException):
        reason = re.sub(r"[^a-z]+", "-", _phrase(e.status_code).lower()).strip("-")
        return error_response(e.status_code, reason, str(e.detail))

    async def validation_error(request: Request, e: RequestValidationError):
        first = (e.errors() or [{}])[0]
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return error_response(422, "invalid", str(first.get("msg", e)), where)

    async def internal_error(request: Request, e: Exception):
        # Starlette re-raises after this answer, so the server log gets the traceback.
        return error_response(
            500, "internal", f"internal error ({type(e).__name__}); the server log has the details"
        )

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


# ---------------------------------------------------------------------------------- running
def app_from_env() -> FastAPI:
    """The app for `uvicorn --factory mmfuse.serve.app:app_from_env` (one per worker process).

    Reads the model folder from $MMFUSE_SERVE_MODEL_DIR, `create_app` keywords, as a JSON
    object, from $MMFUSE_SERVE_OPTIONS and torch's thread count from
    $MMFUSE_SERVE_TORCH_THREADS (unset: torch's default).
    """
    model_dir = os.environ.get(ENV_MODEL_DIR)
    if not model_dir:
        raise RuntimeError(f"set {ENV_MODEL_DIR} to the model folder to serve")
    if os.environ.get(ENV_TORCH_THREADS):
        _set_torch_threads(int(os.environ[ENV_TORCH_THREADS]))
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
    log_level: str = "info",
) -> None:
    """Run the service with uvicorn until interrupted.

    One worker builds the app here, so a bad model folder fails before the port opens. With
    several, each worker process loads its own copy of the model through `app_from_env`.
    `torch_threads` sets each server process's torch thread count (None: torch's default).
    """
    import uvicorn

    from mmfuse.model.saved import read_saved_config

    options = {
        "max_upload_bytes": max_upload_bytes,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "device": device,
    }
    if workers <= 1:
        if torch_threads:
            _set_torch_threads(torch_threads)
        app = create_app(model_dir, **options)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    read_saved_config(model_dir)  # a bad folder fails once here, not in every worker
    os.environ[ENV_MODEL_DIR] = str(Path(model_dir).resolve())
    os.environ[ENV_OPTIONS] = json.dumps(options)
    if torch_threads:
        os.environ[ENV_TORCH_THREADS] = str(torch_threads)
    uvicorn.run(
        "mmfuse.serve.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def serve_command(args: argparse.Namespace) -> int:
    """Serve a saved model over HTTP: a JSON API, a web page and OpenAPI docs.

    Open http://HOST:PORT/ for the page (pick files, type text, see the label and the class
    and modality-weight bars) and /docs for the API. POST /predict takes one sample as
    multipart fields named by input (image, audio and video as files, text as a value);
    POST /predict/batch takes fields named <index>.<input>. Concurrent requests share one
    forward pass (--max-batch, --max-wait-ms). Bad uploads get a 4xx naming the field.

    examples:
      mmfuse serve runs/train
      mmfuse serve runs/train --host 0.0.0.0 --port 8080 --workers 4
      curl -F image=@cat.png -F text="a cat" http://127.0.0.1:8000/predict
      curl -F 0.image=@a.png -F 1.image=@b.png http://127.0.0.1:8000/predict/batch
    """
    from mmfuse.device import resolve_device

    serve(
        args.model_dir,
        args.host,
        args.port,
        args.workers,
        max_upload_bytes=max(1, round(args.max_upload_mb * 2**20)),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        device=str(resolve_device(args.device)),
        torch_threads=args.torch_threads,
        log_level=args.log_level,
    )
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `mmfuse serve`, for the CLI to add to its subcommand."""
    parser.add_argument("model_dir", help="model folder written by `mmfuse train` (its --out)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, metavar="N", help="port (default: 8000)"
    )
    parser.add_argument(
        "--workers",
        type=_at_least(1, int),
        default=1,
        metavar="N",
        help="server processes, each loading its own copy of the model (default: 1)",
    )
    parser.add_argument(
        "--device",
        type=_device_name,
        default="cpu",
        metavar="DEVICE",
        help="cpu, auto (CUDA when present), cuda or cuda:N (default: cpu)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=_at_least(0.001, float),
        default=100.0,
        metavar="MB",
        help="largest request body, in MiB; larger ones get a 413 (default: 100)",
    )
    parser.add_argument(
        "--max-batch",
        type=_at_least(1, int),
        default=32,
        metavar="N",
        help="most samples in one forward pass (default: 32)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=_at_least(0.0, float),
        default=5.0,
        metavar="MS",
        help="how long a request waits for others to share its forward pass (default: 5)",
    )
    parser.add_argument(
        "--torch-threads",
        type=_at_least(1, int),
        metavar="N",
        help="torch threads per server process (default: torch's, one per core)",
    )
    parser.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="info",
        help="uvicorn's log level; below info, requests are not logged (default: info)",
    )


def _at_least(low, kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum of {low}")
        return value

    return parse


def _port(text: str) -> int:
    port = _at_least(0, int)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0 to 65535)")
    return port


def _device_name(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return value


def main(argv: list[str] | None = None) -> int:
    """`python -m mmfuse.serve.app MODEL_DIR ...`, the same as `mmfuse serve`."""
    parser = argparse.ArgumentParser(
        prog="mmfuse serve",
        description=inspect.cleandoc(serve_command.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve_command(args)
    except MmfuseError as e:
        print(f"mmfuse serve: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
