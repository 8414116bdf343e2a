"""Build the FastAPI app from settings: thin routes, state on `app.state`, no import-time work."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from . import errors
from .config import ServerSettings
from .engine import EngineSettings
from .limits import KeyCheck, TooLarge, Unauthorized, load_keys
from .protocol import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModelCard
from .service import Service

log = logging.getLogger("effort.app")
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 502, 503, 504)}
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a JSON chunk, an error object, or [DONE]"}},
}
STREAMS = {
    200: {
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
        "description": "JSON, or server-sent events when `stream` is true",
    }
}


class Guard:
    """Pure ASGI middleware in front of every route: the API key (on /v1, and on /health and
    /metrics when protected) and the request-body limit (by Content-Length, or counted while
    reading a body sent without one). Rejections are OpenAI-shaped and counted in metrics."""

    def __init__(self, app, settings: ServerSettings, keys: KeyCheck, metrics):
        self.app, self.s, self.keys, self.metrics = app, settings, keys, metrics

    def _protected(self, path: str) -> bool:
        return (
            path.startswith("/v1")
            or (path == "/health" and self.s.protect_health)
            or (path == "/metrics" and self.s.protect_metrics)
        )

    async def _reject(self, scope, receive, send, exc, reason: str):
        self.metrics.rejections.labels(reason).inc()
        self.metrics.errors.labels("guard", str(exc.status)).inc()
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        await errors.error_body(exc.status, exc.message, exc.type, exc.param, exc.code, headers)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        hdrs = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.keys.enabled and self._protected(scope["path"]):
            try:
                self.keys.check(hdrs.get("authorization"))
            except Unauthorized as e:
                return await self._reject(scope, receive, send, e, "auth")
        limit = self.s.max_body_bytes
        too_large = TooLarge(f"request body over {limit} bytes")
        length = hdrs.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                return await self._reject(scope, receive, send, too_large, "body_size")
            return await self.app(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more = b"", True  # no Content-Length (chunked): read it here, up to the limit
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > limit:
                return await self._reject(scope, receive, send, too_large, "body_size")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def freeze_startup_heap() -> None:
    """Move everything allocated while starting (vLLM, torch, the tokenizer: millions of objects)
    out of the garbage collector's sight, as vLLM's own server does: otherwise each oldest-
    generation collection walks them all and stalls every stream in flight."""
    gc.collect()
    gc.freeze()


def build_app(settings: ServerSettings, engine: EngineSettings, service: Service | None = None) -> FastAPI:
    service = service or Service(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        freeze_startup_heap()
        try:
            yield
        finally:
            await service.shutdown()

    app = FastAPI(
        title="effort-server",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible API with per-request control of reasoning effort.",
    )
    app.state.service = service
    errors.install(app)
    app.add_middleware(
        Guard,
        settings=settings,
        keys=KeyCheck(load_keys(settings.api_key, settings.api_keys_file)),
        metrics=service.metrics,
    )

    def _stream(gen):
        async def guarded():
            try:
                async for piece in gen:
                    yield piece
            except errors.APIError as e:
                yield f"data: {errors.ErrorResponse(error=errors.ErrorInfo(message=e.message, type=e.type, param=e.param, code=e.code)).model_dump_json()}\n\n"

        return StreamingResponse(guarded(), media_type="text/event-stream")

    async def _run(coro, endpoint: str):
        try:
            result = await coro
        except errors.APIError as e:
            service.metrics.errors.labels(endpoint, str(e.status)).inc()
            raise
        except asyncio.CancelledError:
            return Response(status_code=499)
        return _stream(result) if hasattr(result, "__aiter__") else result

    @app.post("/v1/chat/completions", responses={**ERRORS, **STREAMS})
    async def chat(req: ChatCompletionRequest, request: Request):
        return await _run(service.chat(req, request), "chat")

    @app.post("/v1/completions", responses={**ERRORS, **STREAMS})
    async def completions(req: CompletionRequest, request: Request):
        return await _run(service.completions(req, request), "completions")

    @app.get("/v1/models", responses={401: {"model": ErrorResponse}})
    async def models():
        return service.models()

    @app.get("/v1/models/{model_id:path}", responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    async def model(model_id: str) -> ModelCard:
        return service.model(model_id)

    @app.get("/health", responses={401: {"model": ErrorResponse}, 503: {"description": "the engine is starting"}})
    async def health():
        if not service.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok", "model": service.base_name, "adapters": list(service.adapters)}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"},
            401: {"model": ErrorResponse},
        },
    )
    async def metrics():
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
