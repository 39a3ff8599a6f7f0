"""The FastAPI app of `tunelab serve`: safe defaults, OpenAI-style errors, health and metrics.

Every malformed request gets a 4xx with an OpenAI-style error body, never a traceback; an
API key (from ``TUNELAB_API_KEY``) is checked when set; no CORS unless an origin is given;
bodies above a size limit are refused; while draining for a shutdown, new requests get 503.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.use.serve.metrics import ServeMetrics
from tunelab.use.serve.models import Served, created_at
from tunelab.use.serve.routes import router
from tunelab.use.serve.state import APIError, ServerState, Settings

LOG = logging.getLogger("tunelab.serve")


def create_app(served: dict[str, Served], settings: Settings) -> FastAPI:
    """The app over ``served`` (model id -> model)."""
    app = FastAPI(title="tunelab serve", docs_url=None, redoc_url=None)
    app.state.tunelab = ServerState(served, settings, ServeMetrics(served))
    _add_guards(app, settings)
    _add_error_handlers(app)
    app.include_router(router)

    @app.get("/health")
    async def health() -> JSONResponse:
        state = app.state.tunelab
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(state.served)})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        body, kind = app.state.tunelab.metrics.render()
        return PlainTextResponse(body, media_type=kind)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        state = app.state.tunelab
        data = [
            {
                "id": name,
                "object": "model",
                "created": created_at(one),
                "owned_by": "tunelab",
                "tunelab": one.provenance,
            }
            for name, one in state.served.items()
        ]
        return {"object": "list", "data": data}

    return app


def _add_guards(app: FastAPI, settings: Settings) -> None:
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        state = app.state.tunelab
        api = request.url.path.startswith("/v1/")
        if api and state.draining:
            return APIError(503, "the server is shutting down", "server_error").response()
        if api and settings.api_key and not _authorized(request, settings.api_key):
            return APIError(401, "invalid or missing API key", "authentication_error").response()
        if "transfer-encoding" in request.headers:  # a chunked body would bypass the limit
            return APIError(411, "send the request body with a Content-Length header").response()
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > settings.max_body_bytes:
            limit = settings.max_body_bytes // 2**20
            return APIError(413, f"the request body is over {limit} MiB").response()
        started = time.perf_counter()
        response = await call_next(request)
        if api:
            state.metrics.observe(request.url.path, response.status_code, started)
        return response


def _authorized(request: Request, key: str) -> bool:
    given = request.headers.get("authorization", "")
    token = given.removeprefix("Bearer ").strip()
    return hmac.compare_digest(token.encode(), key.encode())


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        text = f"{where}: {message}" if where else message
        return APIError(400, text, param=where or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return APIError(error.status_code, str(error.detail)).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        LOG.exception("unexpected error on %s", request.url.path)
        return APIError(500, "internal error; see the server log", "server_error").response()
