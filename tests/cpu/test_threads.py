"""How OpenMP threads wait is chosen before PyTorch starts them, and a user's choice wins."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import os, sys
import tunelab.cpu.threads as threads
threads.busy_elsewhere = lambda: {load}
note = threads.choose_wait_policy(training={training})
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


def test_the_busy_count_sees_processes_running_now() -> None:
    from tunelab.cpu.threads import busy_elsewhere

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        import time

        time.sleep(0.5)
        assert busy_elsewhere() >= 2
    finally:
        for spinner in spinners:
            spinner.kill()
