"""How OpenMP threads wait, chosen before PyTorch starts them.

By default OpenMP threads spin for a while before they sleep. On a machine to itself that
saves a little per operation; beside other busy processes the spinning threads take the
cores the working ones need, and every barrier waits for a thread that is not running.
Measured on 2 cores (bench/results/*-contention.md): generating 20 tokens took 1.9 s alone
and 9.4-12.9 s beside one or two other PyTorch processes with the default, 3.6-4.9 s with
``OMP_WAIT_POLICY=PASSIVE`` (2.1 s alone); a training step took 4.0 s alone and 27.6 s beside
two with the default, 11.9 s passive, but passive waiting made training steps alone 9-50%
slower across runs.

So commands that use a model (predict, eval, chat, serve ...) wait passively; training keeps
the default on an idle machine and waits passively when the machine is already busy when it
starts. A user's own ``OMP_WAIT_POLICY`` always wins.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

POLICY = "OMP_WAIT_POLICY"


def choose_wait_policy(training: bool) -> str | None:
    """Set how OpenMP threads wait, if PyTorch has not started them and the user has not
    chosen; returns a line to tell the user when a training run waits passively."""
    if POLICY in os.environ or "torch" in sys.modules:
        return None
    if not training:
        os.environ[POLICY] = "PASSIVE"
        return None
    load = busy_elsewhere()
    cores = os.cpu_count() or 1
    if load < max(1.0, cores / 2):
        return None
    os.environ[POLICY] = "PASSIVE"
    return (
        f"the machine is busy ({load:g} other processes running on {cores} cores): OpenMP "
        "threads wait passively, which keeps steps from slowing many times over beside "
        f"other work (set {POLICY} yourself to choose)"
    )


def busy_elsewhere(samples: int = 5, interval: float = 0.02) -> float:
    """Other processes running or waiting for a core now: the fewest of a few looks at
    /proc/loadavg's runnable count (a process that ran a moment ago, which the load average
    still counts for a minute, does not; a passing one shows in a single look only). Where
    there is no /proc: the 1-minute load average."""
    counts = []
    for index in range(samples):
        try:
            runnable = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        except (OSError, IndexError):
            return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        counts.append(max(int(runnable) - 1, 0))  # this process is one of them
        if index < samples - 1:
            time.sleep(interval)
    return float(min(counts))
