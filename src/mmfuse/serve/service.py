"""The service behind the routes: the loaded model, the preprocessing threads and the batcher.

A request's parts become samples keyed by input name (checked per modality); in a thread pool
each file is written to a temporary file keeping its suffix (so readers can sniff), read by the
same `SampleLoader` as evaluation, and deleted. The tensors then go to a `DynamicBatcher`, so
concurrent requests share one forward pass. A sample whose probabilities come out NaN or Inf
is a 422 naming the field at fault, never an answer. Routes get the service through
`Depends(get_service)`.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from torch import Tensor

from mmfuse.data.modalities import TABULAR
from mmfuse.errors import MediaError
from mmfuse.features.tabular import CellError
from mmfuse.infer.predictor import InputError, Prediction, Predictor
from mmfuse.serve.batcher import DynamicBatcher
from mmfuse.serve.errors import RequestError
from mmfuse.serve.uploads import MAX_BATCH_SAMPLES, MAX_TEXT_BYTES, Part, Upload, temporary_file

# MediaError reasons whose status is not 422.
_MEDIA_STATUS = {"wrong-modality": 415, "too-large": 413}
_BATCH_FIELD = re.compile(r"(\d+)\.(.+)")
# Inputs sent as form values, not files: text, numbers and categories.
VALUE_MODALITIES = ("text", *TABULAR)


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
        self.max_wait_ms = max_wait_ms
        self.upload_dir = upload_dir
        self.batcher = DynamicBatcher(self._forward, max_batch=max_batch, max_wait_ms=max_wait_ms)
        threads = preprocess_threads or max(2, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="mmfuse-preprocess")
        about = predictor.describe()
        self.labels: dict[str, list[str]] = about["labels"]
        self.modalities: dict[str, str] = {n: s["modality"] for n, s in about["inputs"].items()}
        self.version = str(about["mmfuse_version"] or "0")

    def _forward(self, samples: list[dict]) -> list[Prediction]:
        return self.predictor.predict_tensors(samples)

    def describe(self) -> dict:
        """The body of `GET /model`: the model as the predictor describes it, and the limits."""
        return {
            **self.predictor.describe(),
            "limits": {
                "max_upload_bytes": self.max_upload_bytes,
                "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.max_wait_ms,
                "max_batch_samples": MAX_BATCH_SAMPLES,
            },
        }

    # -------------------------------------------------------------- field names → inputs
    def input_of(self, name: str) -> str:
        try:
            return self.predictor.resolve(name)
        except InputError:
            raise self._unknown(name, name) from None

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
            raise self._unknown(match.group(2), name) from None

    def _unknown(self, input_name: str, field_name: str) -> RequestError:
        return RequestError(
            422,
            "unknown-field",
            f"{input_name!r} is not an input of this model; {self._fields()}",
            field_name,
        )

    def _fields(self) -> str:
        names = self.predictor.names
        text = f"its inputs are {', '.join(names)}"
        extra = [m for m in sorted(set(self.modalities.values()) - set(names)) if self._takes(m)]
        return text + (f" (or by modality: {', '.join(extra)})" if extra else "")

    def _takes(self, modality: str) -> bool:
        """Whether the predictor takes `modality` as a field name (its only input of that kind)."""
        try:
            self.predictor.resolve(modality)
        except InputError:
            return False
        return True

    # -------------------------------------------------------------- parts → samples
    def sample_of(self, parts: list[Part], where: str = "") -> Sample:
        """The values of one sample's parts (keyed by input name), checked per modality."""
        sample = Sample(where)
        for part in parts:
            name = part.key[1] if isinstance(part.key, tuple) else part.key
            if self.modalities[name] in VALUE_MODALITIES:
                text = self._text_of(part)
                if text != "":  # an empty text box is an absent input, as in a manifest
                    sample.texts[name] = text
            elif part.filename is None:
                raise RequestError(
                    422,
                    "not-a-file",
                    f"{self.modalities[name]} input {name!r} takes a file upload, got "
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

    def batch_samples(self, parts: list[Part]) -> list[Sample]:
        """Group `<index>.<input>` parts into samples 0..N-1; a gap is a missing sample."""
        by_index: dict[int, list[Part]] = {}
        for part in parts:
            by_index.setdefault(part.key[0], []).append(part)
        if not by_index:
            raise RequestError(
                422,
                "missing-input",
                f"the request has no samples; send fields such as 0.{self.predictor.names[0]}",
            )
        return [self.sample_of(by_index.get(i, []), f"{i}.") for i in range(max(by_index) + 1)]

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
    async def predict(self, upload: Upload, *, batch: bool = False) -> list[Prediction]:
        """The upload's samples (`<index>.<input>` fields when `batch`) through the batcher.

        The upload is closed (its spilled files deleted) once preprocessing is done or fails.
        """
        try:
            parts = upload.parts
            samples = self.batch_samples(parts) if batch else [self.sample_of(parts)]
            prepared = await self.preprocess(samples)
        finally:
            upload.close()
        results = await asyncio.gather(*(self.batcher.submit(p) for p in prepared))
        for sample, values, result in zip(samples, prepared, results):
            if not _finite(result):
                raise self._non_finite(sample, values)
        return list(results)

    def _non_finite(self, sample: Sample, values: dict) -> RequestError:
        """The 422 for a sample whose probabilities are NaN or Inf, naming the input whose
        decoded values are not finite (or the only input; else the sample)."""
        bad = [n for n, v in values.items() if isinstance(v, Tensor) and not v.isfinite().all()]
        if bad:
            name = bad[0]
            shown = sample.files[name].filename if name in sample.files else name
            message = (
                f"{shown!r}: its decoded values hold NaN or Inf, so the model's probabilities "
                "are not finite; send a file whose samples are finite numbers"
            )
        else:
            name = next(iter(values)) if len(values) == 1 else None
            message = (
                "the model's probabilities for this sample are NaN or Inf though its decoded "
                "inputs are finite: an input holds extreme values, or the model's weights are "
                "not finite"
            )
        where = sample.where.rstrip(".") or None
        if name is not None:
            where = sample.files[name].field if name in sample.files else sample.where + name
        return RequestError(422, "non-finite", message, where)

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
        except CellError as e:
            field_name = sample.where + e.input
            raise RequestError(422, "bad-value", f"{e.message}", field_name) from None
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
            message += f"; the {part.field!r} field takes {self.modalities[name]} files"
        return RequestError(_MEDIA_STATUS.get(e.reason, 422), e.reason, message, part.field)

    async def close(self) -> None:
        await self.batcher.close()
        self.pool.shutdown(wait=False)


def _finite(prediction: Prediction) -> bool:
    """Whether every probability (of every task) and fusion weight is a finite number."""
    values = [v for t in prediction.tasks.values() for v in t["probabilities"].values()]
    values += list(prediction.probabilities.values()) + list((prediction.weights or {}).values())
    return all(math.isfinite(v) for v in values)


def get_service(request: Request) -> Service:
    """The app's one `Service`, for routes to take through `Depends`."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
