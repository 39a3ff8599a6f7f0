"""The C heap under CPU training: activation-sized blocks go back to the OS when freed."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from tunelab.heap import USER_SETTING

# Frees a 16 MiB tensor (glibc then raises its threshold past 16 MiB), then measures what
# a second one leaves resident after it is freed. Runs in a fresh process each time, since
# the setting lasts for the process.
PROBE = """
import json, os, sys, torch
from tunelab.heap import map_activation_blocks

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

hidden_size, forward_tokens = int(sys.argv[1]), int(sys.argv[2])
mapped = hidden_size > 0 and map_activation_blocks(hidden_size, forward_tokens)
first = torch.ones(4 * 2**20)
del first
before = resident()
second = torch.ones(4 * 2**20)
del second
print(json.dumps({"mapped": mapped, "kept_mib": (resident() - before) / 2**20}))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)


def _probe(hidden_size: int, forward_tokens: int, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != USER_SETTING}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(hidden_size), str(forward_tokens)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


@glibc_only
def test_a_freed_activation_sized_block_leaves_nothing_resident() -> None:
    default = _probe(0, 0)
    mapped = _probe(1024, 4096)  # Qwen3-0.6B's hidden states at 8 x 512: 16 MiB
    assert not default["mapped"] and default["kept_mib"] >= 15  # the heap keeps it
    assert mapped["mapped"] and mapped["kept_mib"] < 1


@glibc_only
def test_small_passes_and_the_users_own_threshold_are_left_alone() -> None:
    small = _probe(576, 768)  # SmolLM2-135M at the default forward_tokens: 1.7 MiB
    assert not small["mapped"] and small["kept_mib"] >= 15
    users = _probe(1024, 4096, **{USER_SETTING: str(64 * 2**20)})
    assert not users["mapped"]
