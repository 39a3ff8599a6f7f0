"""The C heap under CPU training: activation-sized blocks come from the OS and go back to it.

glibc serves a block below its mmap threshold from the heap, and raises that threshold (up
to 32 MiB) to the size of any mapped block that is freed. So after a training step's first
large free, activations of up to 32 MiB (a Qwen3-0.6B hidden state at 4,096 tokens is
16 MiB) are carved from the heap, and the holes they leave stay resident. Measured on a
gradient-checkpointed Qwen3-0.6B step at batch 8 x 512 on a CPU: resident memory grew
145 MB per layer in the forward pass while 16 MB per layer were live, and the step peaked
at 7.2 GB instead of 3.8 GB. A fixed threshold maps every block from 4 MiB up and unmaps it
when it is freed. Smaller blocks stay on the heap: mapping them costs page faults on small,
cheap operations (1 MiB: SmolLM2-135M steps 38% slower). And only runs whose forward passes
hold hidden states of 4 MiB or more get the setting: below that it saved nothing measurable
and cost 2-4% of the step time (SmolLM2-135M, 768-token passes).
"""

from __future__ import annotations

import ctypes
import os

from tunelab.cpu.allocator import KEEP_SYSTEM, allocator_in_use, on_glibc

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MAPPED_FROM_BYTES = 4 * 2**20
USER_SETTING = "MALLOC_MMAP_THRESHOLD_"


def map_activation_blocks(hidden_size: int, forward_tokens: int) -> bool:
    """``map_large_blocks`` when a pass's fp32 hidden states reach its threshold."""
    if hidden_size * forward_tokens * 4 < MAPPED_FROM_BYTES:
        return False
    return map_large_blocks()


def map_large_blocks(threshold: int = MAPPED_FROM_BYTES) -> bool:
    """Have glibc map blocks of ``threshold`` bytes and more, and unmap them when freed.

    Process-wide and lasting. Returns whether it was set: not off Linux/glibc, not when
    another allocator replaced glibc's malloc (``tunelab.cpu.allocator``), and not when
    ``MALLOC_MMAP_THRESHOLD_`` is in the environment, which is the user's own choice.
    """
    if not on_glibc() or USER_SETTING in os.environ or allocator_in_use() != KEEP_SYSTEM:
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
