"""Typed errors, mapped once to OpenAI-shaped bodies: {"error": {message, type, param, code}}.

Nothing reaches the client as a 500 with a stack trace: validation problems are 400, unknown
models 404, an engine failure 503 with a short message (and a log line with the details).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import ErrorInfo, ErrorResponse

log = logging.getLogger("effort.errors")


class APIError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param
        if code:
            self.code = code


class BadRequest(APIError):
    pass


class EffortError(APIError):
    code = "invalid_effort"


class ContextTooLong(APIError):
    code = "context_length_exceeded"


class ModelNotFound(APIError):
    status, code = 404, "model_not_found"


class EngineUnavailable(APIError):
    status, type, code = 503, "server_error", "engine_unavailable"


def error_body(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if not loc and e.get("type") in ("model_attributes_type", "dict_type", "model_type", "missing"):
        return "request body must be a JSON object", None
    param = ".".join(loc) or None
    msg = e.get("msg", "invalid value")
    if e.get("type") == "missing":
        msg = f"missing required parameter '{param}'"
    elif param:
        msg = f"invalid '{param}': {msg}"
    return msg, param


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError):
        return error_body(exc.status, exc.message, exc.type, exc.param, exc.code, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        msg, param = _validation_message(exc)
        return error_body(400, msg, "invalid_request_error", param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_body(exc.status_code, str(exc.detail), type_, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_body(500, f"internal error: {type(exc).__name__}", "server_error", code="internal_error")
