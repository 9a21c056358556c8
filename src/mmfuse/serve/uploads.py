"""Multipart uploads: the body parsed as it streams, under the request limits.

Each part's field name is resolved (to an input, or an index and an input) as soon as its
headers end, so an unknown or repeated field is refused before its data is read. File parts are
held in memory up to `SPOOL_BYTES` and spilled to a temporary file past it; text values stop at
`MAX_TEXT_BYTES`, and the whole body at the server's `max_upload_bytes`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from mmfuse.serve.errors import RequestError

# Text fields (and .txt uploads for text inputs) larger than this are refused with a 413.
MAX_TEXT_BYTES = 1 << 20
# A file part is held in memory up to this size, and spilled to a temporary file beyond it.
SPOOL_BYTES = 1 << 20
# Samples one /predict/batch request may carry; each still rides the shared batcher.
MAX_BATCH_SAMPLES = 256
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")


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
