"""`tunelab studio`: the web app over a workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import console, prepare


def studio(
    workspace: Annotated[
        Path, typer.Option(help="The folder the studio reads and writes; runs go in runs/.")
    ] = Path("."),
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; beyond 127.0.0.1 needs TUNELAB_STUDIO_TOKEN."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 7860,
) -> None:
    """A web studio: prepare data, launch, watch, compare, evaluate and chat with runs."""
    from tunelab.studio.launch import remember_environment

    remember_environment()
    prepare()
    from tunelab.studio.server import run_studio
    from tunelab.studio.workspace import Workspace

    run_studio(Workspace.at(workspace), host, port, console)
