"""`tunelab train --nproc N`: the same command, N data-parallel processes via accelerate.

On a machine without a GPU the processes use the CPU and the gloo backend. For several GPUs
or machines, call `accelerate launch` / `torchrun` yourself (README: "Several processes").
"""

from __future__ import annotations

import socket
import subprocess
import sys

import torch


def launch_command(nproc: int, arguments: list[str], port: int) -> list[str]:
    """`accelerate launch` running `python -m tunelab` with ``arguments`` in ``nproc`` processes.

    >>> launch_command(2, ["train", "c.yaml"], 29500)[-5:]
    ['-m', 'tunelab', 'train', 'c.yaml', '--nproc=1']
    """
    device = [] if torch.cuda.is_available() else ["--cpu"]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        *device,
        "-m",
        "tunelab",
        *arguments,
        "--nproc=1",
    ]


def without_option(arguments: list[str], name: str) -> list[str]:
    """The arguments minus ``name VALUE`` / ``name=VALUE``.

    >>> without_option(["train", "c.yaml", "--nproc", "2", "--resume"], "--nproc")
    ['train', 'c.yaml', '--resume']
    """
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == name:
            skip = True
        elif not argument.startswith(f"{name}="):
            kept.append(argument)
    return kept


def relaunch(nproc: int, arguments: list[str]) -> int:
    """Run the command again under accelerate; returns its exit status."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return subprocess.call(launch_command(nproc, arguments, port))
