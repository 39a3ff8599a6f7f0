"""Running `tunelab studio`: loopback by default, a token from the environment otherwise."""

from __future__ import annotations

import uvicorn
from rich.console import Console

from tunelab.studio.app import create_studio
from tunelab.studio.workspace import Workspace
from tunelab.use.serve.server import secret_for_host

TOKEN_VARIABLE = "TUNELAB_STUDIO_TOKEN"


def studio_token(host: str) -> str | None:
    """The token from the environment; required when the studio listens beyond this machine."""
    what = "a token first (open the page once as http://HOST:PORT/?token=TOKEN)"
    return secret_for_host(TOKEN_VARIABLE, host, what)


def run_studio(workspace: Workspace, host: str, port: int, console: Console) -> None:
    """Serve the studio until Ctrl-C; runs it launched go on without it."""
    app = create_studio(workspace, studio_token(host))
    console.print(f"tunelab studio on http://{host}:{port}/  (workspace {workspace.root})")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
