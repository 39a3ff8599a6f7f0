"""The `tunelab` command: parses arguments, calls one function per command, prints the result.

Heavy libraries (torch, transformers) are imported inside commands so `--help` is instant.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from tunelab.cli import behavior, data
from tunelab.cli.common import console
from tunelab.cli.runs import app
from tunelab.cli.studio import studio
from tunelab.config_keys import RenamedKeyWarning
from tunelab.cpu.allocator import restart_with_allocator
from tunelab.errors import Interrupted, TunelabError

app.add_typer(data.app, name="data")
app.add_typer(behavior.app, name="behavior")
app.command()(studio)
# commands whose steps slow down on glibc's malloc as a run goes on (tunelab/cpu/allocator.py)
TRAINING_COMMANDS = ("train", "sweep")


def show_config_warning(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
    """A moved config key in one line (the main process says it), other warnings as usual."""
    if not issubclass(category, RenamedKeyWarning):
        _show_warning(message, category, *args, **kwargs)
    elif os.environ.get("RANK", "0") == "0":
        from rich.markup import escape

        console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False)


_show_warning = warnings.showwarning


def main() -> None:
    """Entry point: a TunelabError prints its message and exits with its code, no traceback."""
    warnings.showwarning = show_config_warning
    try:
        if sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
            restart_with_allocator()
        app()
    except TunelabError as error:
        from rich.markup import escape

        # every worker of a data-parallel run stops after the same step; the main one says so
        if not isinstance(error, Interrupted) or os.environ.get("RANK", "0") == "0":
            console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        sys.exit(error.exit_code)
