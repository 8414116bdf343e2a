"""Build the FastAPI app from settings: thin routes, state on `app.state`, no import-time work."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from . import errors
from .config import ServerSettings
from .engine import EngineSettings
from .protocol import ChatCompletionRequest, CompletionRequest, ErrorResponse
from .service import Service

log = logging.getLogger("effort.app")
ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def build_app(settings: ServerSettings, engine: EngineSettings, service: Service | None = None) -> FastAPI:
    service = service or Service(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.shutdown()

    app = FastAPI(title="effort-server", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API with per-request control of reasoning effort.")
    app.state.service = service
    errors.install(app)

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

    @app.post("/v1/chat/completions", responses=ERRORS)
    async def chat(req: ChatCompletionRequest, request: Request):
        return await _run(service.chat(req, request), "chat")

    @app.post("/v1/completions", responses=ERRORS)
    async def completions(req: CompletionRequest, request: Request):
        return await _run(service.completions(req, request), "completions")

    @app.get("/v1/models")
    async def models():
        return service.models()

    @app.get("/health")
    async def health():
        if not service.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok", "model": service.base_name, "adapters": list(service.adapters)}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
