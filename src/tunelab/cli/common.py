"""What every command module of the CLI shares: the console, common options, the quieting
of libraries' own output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set train.max_steps=10 (repeatable)."),
]


RunArgument = Annotated[Path, typer.Argument(help="A run directory (runs/NAME).")]
CheckpointOption = Annotated[
    str | None, typer.Option(help="final (default), best, or a step number of a saved checkpoint.")
]


def prepare(training: bool = False) -> None:
    """Before a command loads PyTorch: choose how its threads wait, quiet the libraries."""
    from tunelab.cpu.threads import choose_wait_policy

    note = choose_wait_policy(training)
    if note and os.environ.get("RANK", "0") == "0":
        console.print(f"[yellow]{note}[/yellow]")
    quiet_libraries()


def quiet_libraries() -> None:
    """Our own progress and messages replace the libraries' load bars and notices."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
