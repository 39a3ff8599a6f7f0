"""Attention for CPU training on packed rows.

``use_cpu_attention`` computes each sample of a packed row on its own when the batch says
where samples start, and otherwise keeps grouped-query attention grouped on a CPU:
transformers' SDPA path repeats each key/value head for every query head it serves whenever
a mask is given, and SDPA then keeps the repeated copies for backward.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CPU_ATTENTION = "tunelab_sdpa"


def use_cpu_attention(model: nn.Module) -> bool:
    """Switch an SDPA model to the attention below; returns whether it was switched.

    Models on another attention are left alone.
    """
    pretrained = _pretrained(model)
    if pretrained is None or pretrained.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(CPU_ATTENTION, _cpu_sdpa)
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)
    pretrained.set_attn_implementation(CPU_ATTENTION)
    return True


def takes_sample_boundaries(model: nn.Module) -> bool:
    """Whether the model's attention computes each sample of a packed row on its own when
    given ``Batch.attention_kwargs``: on the attention below, without a sliding window."""
    pretrained = _pretrained(model)
    return (
        pretrained is not None
        and pretrained.config._attn_implementation == CPU_ATTENTION
        and getattr(pretrained.config, "sliding_window", None) is None
    )


def _pretrained(model: nn.Module) -> PreTrainedModel | None:
    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def _cpu_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with two cases of a packed row done leaner.

    Given sample boundaries (``cu_seq_lens_q``) for one row, each sample attends to itself
    with a causal kernel: the block-diagonal mask would make the kernel compute every
    sample against every other and throw it away. Given a boolean mask over a multi-token
    query on a CPU, grouped key/value heads stay grouped (``enable_gqa``): transformers
    repeats them whenever a mask is given, and SDPA keeps the copies for backward (PyTorch's
    CPU flash kernel takes a mask with grouped heads as it is; on CUDA that would fall back
    to the slow math kernel). Every other case goes to transformers' own function.
    """
    plain = all(kwargs.get(k) is None for k in ("position_bias", "cache", "softcap"))
    starts = kwargs.get("cu_seq_lens_q")
    one_row = starts is not None and query.shape[0] == 1 and query.shape[2] > 1
    if plain and one_row and kwargs.get("sliding_window") is None:
        return _per_sample_attention(query, key, value, starts.tolist(), dropout, scaling)
    grouped = (
        plain
        and query.device.type == "cpu"
        and attention_mask is not None
        and attention_mask.dtype == torch.bool
        and query.shape[2] > 1
        and key.shape[1] != query.shape[1]
    )
    if not grouped:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


def _per_sample_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    starts: list[int],
    dropout: float,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each ``[starts[i], starts[i + 1])`` of a (1, heads, length,
    dim) row; returns (1, length, heads, dim) as transformers' attention functions do."""
    grouped = key.shape[1] != query.shape[1]
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=grouped,
        ).transpose(1, 2)
        for start, end in itertools.pairwise(starts)
    ]
    return torch.cat(parts, dim=1), None
