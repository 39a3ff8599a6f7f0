"""Numeric precision: which one a run uses, and how bf16 is applied on a CPU.

On a GPU, bf16 is autocast over a bf16 base, as everywhere. On a CPU with native bf16
instructions, autocast rounds every activation to bf16, and then a LoRA update (about 0.5%
of a projection's output after the first steps) drowns in the rounding of
``base + update``: the loss curve lags fp32 badly (see bench/precision.py). tunelab instead
stores the frozen linear weights in bf16 and multiplies in bf16, but returns fp32: the
adapter, norms, residual stream and loss stay fp32, so the curve tracks fp32 while the
matrix products, most of the work, run at bf16 speed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.errors import TunelabError

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    flags = next(
        (line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), ""
    )
    return any(flag in flags.split() for flag in CPU_BF16_FLAGS)


def resolve_precision(requested: str) -> str:
    """`auto`: bf16 on a GPU that supports it and on a CPU with native bf16, else fp32."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "fp16" and not cuda:  # scripts written for GPUs pass --fp16 everywhere
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "bf16" and not cuda and not cpu_has_native_bf16():
        # measured: 1 GFLOP/s for a 1024^2 bf16 matmul against 117 in fp32 on an AVX2 CPU
        raise TunelabError(
            "train.precision: bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX) and this "
            "one has neither: its bf16 matrix products would run about 100x slower than fp32. "
            "Use precision: auto (picks fp32 here) or fp32"
        )
    return requested


def fallback_notice(requested: str, resolved: str) -> str | None:
    """What to tell a user whose precision was replaced, or None.

    >>> fallback_notice("fp16", "fp32")
    'train.precision fp16 needs a GPU; this CPU trains in fp32 instead'
    """
    if requested == "fp16" and resolved != "fp16":
        return f"train.precision fp16 needs a GPU; this CPU trains in {resolved} instead"
    return None


def usable_precision(trained_with: str | None) -> str:
    """The precision to use a run in: the one it trained in where this machine runs that,
    else what ``auto`` picks here (a run trained in bf16 on a GPU, opened on an AVX2 CPU)."""
    if trained_with is None:
        return resolve_precision("auto")
    try:
        return resolve_precision(trained_with)
    except TunelabError:
        return resolve_precision("auto")


def autocast_mode(precision: str) -> str:
    """The `accelerate` mixed-precision setting: autocast on a GPU, never on a CPU."""
    if not torch.cuda.is_available():
        return "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def base_dtype(precision: str) -> torch.dtype:
    """The dtype the base model is loaded in."""
    if torch.cuda.is_available():
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.float32


def bf16_frozen_matmuls(model: nn.Module) -> int:
    """Store frozen linear weights in bf16; their inputs go in as bf16, outputs come out fp32.

    The output embeddings stay fp32 (they are often tied to the input embeddings, whose
    output feeds the fp32 residual stream). Returns how many layers were converted.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    converted = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not head and not module.weight.requires_grad:
            module.to(torch.bfloat16)
            module.bf16_hooks = (
                module.register_forward_pre_hook(_inputs_to_bf16),
                module.register_forward_hook(_output_to_fp32),
            )
            converted += 1
    return converted


def fp32_matmuls(model: nn.Module) -> int:
    """Undo ``bf16_frozen_matmuls``: the weights back in fp32 (as bf16 rounded them) and the
    hooks removed. Before an adapter is folded into the weights: ``W + s B A`` rounded to bf16
    loses much of a small update. Returns how many layers were restored."""
    restored = 0
    for module in model.modules():
        hooks = module.__dict__.pop("bf16_hooks", None)
        if hooks is not None:
            for hook in hooks:
                hook.remove()
            module.to(torch.float32)
            restored += 1
    return restored


def _inputs_to_bf16(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].to(torch.bfloat16), *args[1:])


def _output_to_fp32(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    return output.float()
