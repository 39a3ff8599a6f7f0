"""The studio's FastAPI app: a JSON API over the workspace, event streams for live curves and
chat, and the page itself (plain HTML, CSS and JavaScript shipped in the package: no CDN, no
build step, nothing fetched at run time).

Errors are JSON ``{"error": "..."}``: 400 for what the user can fix, 403 for a path outside
the workspace or a missing token, 404 for what is not there.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from tunelab.errors import TunelabError
from tunelab.studio import launch
from tunelab.studio.chat import ChatModels, chat_events
from tunelab.studio.data_view import DATA_SUFFIXES, preview
from tunelab.studio.form import field_errors, form_fields, raw_config
from tunelab.studio.runs import (
    detail,
    evaluation,
    metrics_after,
    read_metrics,
    summary,
    watched_state,
)
from tunelab.studio.workspace import OutsideWorkspace, Workspace, run_status

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "tunelab_studio_token"
POLL_S = 0.5
# a change in any of these redraws the run page (a curve point does not)
WATCHED_FIELDS = ("status", "score", "evaluations", "jobs_running", "error")
EVENT_STREAM = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_studio(workspace: Workspace, token: str | None = None) -> FastAPI:
    """The studio over ``workspace``; ``token``: required of every request when set."""
    app = FastAPI(title="tunelab studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workspace = workspace
    app.state.chat = ChatModels()
    _add_guard(app, token)
    _add_errors(app)
    _add_run_routes(app, workspace)
    _add_form_routes(app, workspace)
    _add_data_routes(app, workspace)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _add_run_routes(app: FastAPI, workspace: Workspace) -> None:
    @app.get("/api/runs")
    async def runs() -> list[dict[str, Any]]:
        launch.reap()
        return [summary(workspace.run(name)) for name in workspace.run_names()]

    @app.get("/api/runs/{name}")
    async def one_run(name: str) -> dict[str, Any]:
        return detail(_existing(workspace, name))

    @app.get("/api/runs/{name}/metrics")
    async def metrics(name: str) -> list[dict[str, Any]]:
        return read_metrics(_existing(workspace, name))

    @app.get("/api/runs/{name}/stream")
    async def stream(name: str, request: Request) -> StreamingResponse:
        run = _existing(workspace, name)
        start = int(request.headers.get("last-event-id") or 0)
        events = _metric_events(run, start, request)
        return StreamingResponse(events, media_type="text/event-stream", headers=EVENT_STREAM)

    @app.get("/api/runs/{name}/eval/{eval_name}")
    async def one_evaluation(name: str, eval_name: str) -> dict[str, Any]:
        return evaluation(_existing(workspace, name), eval_name)

    @app.post("/api/runs/{name}/chat")
    async def chat(name: str, request: Request) -> StreamingResponse:
        run = _existing(workspace, name)
        body = await _json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise TunelabError("messages: expected a list of {role, content}")
        base, max_new = bool(body.get("base")), int(body.get("max_new_tokens") or 128)
        events = chat_events(app.state.chat, run, messages, base, max_new)
        return StreamingResponse(events, media_type="text/event-stream", headers=EVENT_STREAM)

    @app.post("/api/runs/{name}/{action}")
    async def act(name: str, action: str) -> dict[str, Any]:
        _existing(workspace, name)
        if action == "stop":
            launch.stop(workspace, name)
        elif action == "resume":
            launch.resume(workspace, name)
            app.state.chat.forget(workspace.run(name))
        elif action in launch.JOBS:
            launch.run_job(workspace, name, action)
        else:
            raise TunelabError(f"unknown action {action!r}")
        return {"ok": True, **run_status(workspace.run(name))}


def _add_form_routes(app: FastAPI, workspace: Workspace) -> None:
    @app.get("/api/form")
    async def form() -> dict[str, Any]:
        return {"fields": form_fields(), "files": workspace.files(DATA_SUFFIXES)}

    @app.post("/api/config/check")
    async def check(request: Request) -> JSONResponse:
        body = await _json_body(request)
        try:
            _, saved = launch.checked_config(workspace, raw_config(body.get("values") or {}))
        except OutsideWorkspace:
            raise
        except TunelabError as error:
            fields = field_errors(str(error))
            return JSONResponse({"ok": False, "message": str(error), "fields": fields})
        import yaml

        text = yaml.safe_dump(saved, sort_keys=False, allow_unicode=True)
        return JSONResponse({"ok": True, "yaml": text})

    @app.post("/api/runs")
    async def create(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        raw = raw_config(body.get("values") or {})
        name = launch.launch_train(workspace, raw, overwrite=bool(body.get("overwrite")))
        app.state.chat.forget(workspace.run(name))
        return {"ok": True, "name": name}


def _add_data_routes(app: FastAPI, workspace: Workspace) -> None:
    @app.get("/api/data")
    async def data(path: str, model: str | None = None) -> dict[str, Any]:
        file = workspace.resolve(path)
        if not file.is_file() or not file.name.endswith(DATA_SUFFIXES):
            raise TunelabError(f"{path}: not a data file ({', '.join(DATA_SUFFIXES)})")
        spec = workspace.model_spec(model) if model else None
        return await asyncio.to_thread(preview, file, path, spec)


async def _metric_events(run: Any, start: int, request: Request) -> AsyncIterator[str]:
    """Every metrics line from line ``start`` on, as it is written, and the run's state when
    its status, score, evaluations or jobs change; the event id is the line number, so a
    reconnecting page resumes there."""
    line, offset = _skip_lines(run, start)
    last_state = None
    while not await request.is_disconnected():
        records, offset = metrics_after(run, offset)
        for record in records:
            line += 1
            yield f"id: {line}\nevent: metrics\ndata: {json.dumps(record)}\n\n"
        state = watched_state(run)
        key = json.dumps([state.get(k) for k in WATCHED_FIELDS], default=str)
        if key != last_state:
            last_state = key
            yield f"event: status\ndata: {json.dumps(state, ensure_ascii=False)}\n\n"
        await asyncio.sleep(POLL_S)


def _skip_lines(run: Any, lines: int) -> tuple[int, int]:
    """(whole lines skipped, byte offset after them): where a reconnecting page resumes."""
    skipped = offset = 0
    if lines <= 0 or not run.metrics.is_file():
        return skipped, offset
    with run.metrics.open("rb") as handle:
        for raw in handle:
            if skipped == lines or not raw.endswith(b"\n"):
                break
            skipped, offset = skipped + 1, offset + len(raw)
    return skipped, offset


def _existing(workspace: Workspace, name: str) -> Any:
    run = workspace.run(name)
    if not run.root.is_dir():
        raise FileNotFoundError(f"no run named {name!r} in {workspace.runs_dir.name}/")
    return run


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise TunelabError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise TunelabError("the request body: expected a JSON object")
    return body


def _add_guard(app: FastAPI, token: str | None) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        given = given or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "a valid studio token is required"}, status_code=403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


def _add_errors(app: FastAPI) -> None:
    @app.exception_handler(OutsideWorkspace)
    async def outside(request: Request, error: OutsideWorkspace) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=403)

    @app.exception_handler(TunelabError)
    async def refused(request: Request, error: TunelabError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(FileNotFoundError)
    async def missing(request: Request, error: FileNotFoundError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=404)
