"""The C heap under CPU training: activation-sized blocks go back to the OS when freed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunelab.cpu.allocator import PRELOAD, packaged_mimalloc, system_jemalloc
from tunelab.cpu.heap import USER_SETTING, on_glibc

# Frees a 16 MiB tensor (glibc then raises its threshold past 16 MiB), then measures what
# a second one leaves resident after it is freed. Runs in a fresh process each time, since
# the setting lasts for the process.
PROBE = """
import json, sys, psutil, torch
from tunelab.cpu.heap import map_activation_blocks

process = psutil.Process()
mapped = map_activation_blocks(int(sys.argv[1]), int(sys.argv[2]))
first = torch.ones(4 * 2**20)
del first
before = process.memory_info().rss
second = torch.ones(4 * 2**20)
del second
print(json.dumps({"mapped": mapped, "kept_mib": (process.memory_info().rss - before) / 2**20}))
"""

glibc_only = pytest.mark.skipif(not on_glibc(), reason="glibc's mallopt")


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
def test_a_freed_activation_sized_block_leaves_nothing_resident_after_big_passes_only() -> None:
    small = _probe(576, 768)  # SmolLM2-135M at the default forward_tokens: 1.7 MiB
    mapped = _probe(1024, 4096)  # Qwen3-0.6B's hidden states at 8 x 512: 16 MiB
    assert not small["mapped"] and small["kept_mib"] >= 15  # glibc's default: the heap keeps it
    assert mapped["mapped"] and mapped["kept_mib"] < 1


@glibc_only
def test_the_users_own_threshold_is_left_alone() -> None:
    users = _probe(1024, 4096, **{USER_SETTING: str(64 * 2**20)})
    assert not users["mapped"]


@glibc_only
def test_another_allocator_preloaded_is_left_its_own_policy() -> None:
    library = system_jemalloc() or packaged_mimalloc()
    assert not _probe(1024, 4096, **{PRELOAD: str(library)})["mapped"]
