"""`tunelab train --nproc N`: the same command in N data-parallel processes on this machine.

Each worker gets the environment torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), so accelerate sets up gloo on a CPU and NCCL on GPUs. This is not
`accelerate launch`, which starts a single process when there is no GPU (it leaves several
to mpirun), nor torchrun, whose own handling of Ctrl-C prints a traceback and exits 1 while
the workers finish their step and save. For several machines, call `accelerate launch` or
`torchrun` yourself (README: "Several processes").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

# a worker that failed leaves the others blocked in their next collective
FAILED_PEER_GRACE_S = 30.0


def worker_environment(rank: int, nproc: int, port: int) -> dict[str, str]:
    """This environment plus what a data-parallel worker reads to find its place.

    On a CPU the cores are shared out among the workers unless OMP_NUM_THREADS is set.

    >>> env = worker_environment(1, 2, 29500)
    >>> [env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")]
    ['1', '1', '2', '29500']
    """
    environment = {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        environment["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return environment


@contextmanager
def main_alone(device: torch.device) -> Iterator[None]:
    """All the cores the workers on this machine share, for what the main process does while
    the others wait (evaluation, saving) or have ended.

    A blocked worker sleeps in gloo rather than spin, so its share of the cores is idle.
    """
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    before = torch.get_num_threads()
    if device.type != "cpu" or sharing <= 1:
        yield
        return
    torch.set_num_threads(min(before * sharing, os.cpu_count() or before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def start_workers(command: list[str], nproc: int, **popen: Any) -> list[subprocess.Popen]:
    """``command`` in ``nproc`` workers that meet at a free port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [
        subprocess.Popen(command, env=worker_environment(rank, nproc, port), **popen)
        for rank in range(nproc)
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
    """Run `python -m tunelab ARGUMENTS` in ``nproc`` workers; returns the group's exit status.

    A terminal's Ctrl-C reaches the workers as well as this process: they finish the running
    step and save, so this process ignores it and waits for them rather than exit first and
    leave them printing after the prompt is back. A SIGTERM sent to this process alone is
    passed on to them.
    """
    workers = start_workers([sys.executable, "-m", "tunelab", *arguments], nproc)

    def pass_on(number: int, frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(number)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, pass_on),
    }
    try:
        return wait_for_workers(workers)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def wait_for_workers(workers: list[subprocess.Popen], grace_s: float = FAILED_PEER_GRACE_S) -> int:
    """Wait for every worker; 0 if all succeeded, else the status of the first to fail, as a
    shell reports it (128 + N for a worker killed by signal N).

    Once one worker has failed, the others get ``grace_s`` to end on their own (they usually
    fail at once, their peer gone) before they are killed.
    """
    first_failure = 0
    deadline = float("inf")
    while True:
        running = [worker for worker in workers if worker.poll() is None]
        failures = [worker.returncode for worker in workers if worker.returncode]
        if failures and not first_failure:
            first_failure = 128 - failures[0] if failures[0] < 0 else failures[0]
            deadline = time.monotonic() + grace_s
        if not running:
            return first_failure
        if time.monotonic() > deadline:
            for worker in running:
                worker.kill()
        time.sleep(0.05)
