"""How OpenMP threads wait is chosen before PyTorch starts them, and a user's choice wins."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import os, sys
os.getloadavg = lambda: ({load}, 0.0, 0.0)
from tunelab.cpu.threads import choose_wait_policy
note = choose_wait_policy(training={training})
print(os.environ.get("OMP_WAIT_POLICY"), "|", note)
"""


def probe(training: bool, load: float, **env: str) -> tuple[str, str]:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = PROBE.format(load=load, training=training)
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    policy, note = done.stdout.strip().split(" | ")
    return policy, note


def test_commands_that_use_a_model_wait_passively() -> None:
    assert probe(training=False, load=0.0) == ("PASSIVE", "None")


def test_training_spins_on_an_idle_machine_and_waits_passively_on_a_busy_one() -> None:
    cores = os.cpu_count() or 1
    assert probe(training=True, load=0.0) == ("None", "None")
    policy, note = probe(training=True, load=2.0 * cores)
    assert policy == "PASSIVE" and "the machine is busy" in note


def test_the_users_own_setting_wins() -> None:
    assert probe(training=False, load=9.0, OMP_WAIT_POLICY="ACTIVE") == ("ACTIVE", "None")
