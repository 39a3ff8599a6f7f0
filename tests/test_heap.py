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
from tunelab.heap import map_large_blocks

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

mapped = sys.argv[1] == "map" and map_large_blocks()
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


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != USER_SETTING}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


@glibc_only
def test_a_freed_activation_sized_block_leaves_nothing_resident() -> None:
    default = _probe("keep")
    mapped = _probe("map")
    assert not default["mapped"] and default["kept_mib"] >= 15  # the heap keeps it
    assert mapped["mapped"] and mapped["kept_mib"] < 1


@glibc_only
def test_the_users_own_threshold_is_left_alone() -> None:
    result = _probe("map", **{USER_SETTING: str(64 * 2**20)})
    assert not result["mapped"]
