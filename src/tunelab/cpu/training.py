"""A model made ready to train on a CPU, with every part of the CPU wing that applies."""

from __future__ import annotations

import torch
from torch import nn

from tunelab.cpu import attention, heap, layers
from tunelab.cpu.dropout import use_fast_dropout
from tunelab.precision import bf16_frozen_matmuls


def prepare_for_cpu_training(model: nn.Module, precision: str, forward_tokens: int) -> None:
    """On a CPU: bf16 frozen matmuls when asked, LoRA dropout with cheap masks, the fused
    LoRA layers, tunelab's attention, and activation-sized blocks mapped from the OS
    (``tunelab.cpu.heap``) when passes of ``forward_tokens`` make them big enough.

    On a GPU: nothing.
    """
    if torch.cuda.is_available():
        return
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden_size:
        heap.map_activation_blocks(hidden_size, forward_tokens)
    if precision == "bf16":
        bf16_frozen_matmuls(model)
    # a checkpointed model recomputes its layers, and needs masks it can draw again
    use_fast_dropout(model, recomputable=_checkpointing(model))
    layers.install(model)
    attention.use_cpu_attention(model)


def _checkpointing(model: nn.Module) -> bool:
    # what transformers' is_activation_checkpointing reads, on any release
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
