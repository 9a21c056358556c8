"""Every error the service answers, in one JSON shape: `{"error": {"field", "reason", "message"}}`.

`RequestError` is what uploads and the service raise for bad input (a 4xx); the handlers that
`add_error_handlers` installs turn it, FastAPI's own HTTP and validation errors, and any bug (a
500) into that shape.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class RequestError(Exception):
    """A 4xx answer: the field at fault (None for the whole request), a reason tag, a message."""

    def __init__(self, status: int, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.field = field


class ErrorDetail(BaseModel):
    field: str | None
    reason: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(reason: str, message: str, field: str | None = None) -> dict:
    """The JSON body of every error answer."""
    return {"error": {"field": field, "reason": reason, "message": message}}


def error_response(
    status: int, reason: str, message: str, field: str | None = None, headers=None
) -> JSONResponse:
    return JSONResponse(error_body(reason, message, field), status_code=status, headers=headers)


async def request_error(request: Request, e: RequestError) -> JSONResponse:
    return error_response(e.status, e.reason, e.message, e.field)


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    reason = re.sub(r"[^a-z]+", "-", _phrase(e.status_code).lower()).strip("-")
    return error_response(e.status_code, reason, str(e.detail))


async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    first = (e.errors() or [{}])[0]
    where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
    return error_response(422, "invalid", str(first.get("msg", e)), where)


async def internal_error(request: Request, e: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so the server log gets the traceback.
    return error_response(
        500, "internal", f"internal error ({type(e).__name__}); the server log has the details"
    )


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"
