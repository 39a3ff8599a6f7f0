"""Causal attention for packed rows, one sample at a time.

A packed row holds several samples whose position ids restart at 0. transformers turns
that into a block-diagonal mask over the whole row; SDPA with an explicit mask then
computes every block of the row (the masked ones too), and transformers copies keys and
values once per query head, because SDPA's grouped-query path does not take a mask. Here
each sample is attended on its own with ``is_causal``, so only the lower triangle of each
sample is computed and grouped-query attention needs no copies. The result is the same
attention; anything else (a padding mask, a KV cache, sliding windows) goes to
transformers' SDPA function unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "tunelab_packed_sdpa"


def packed_causal_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention interface transformers calls: (batch, heads, length, dim) in, the
    output as (batch, length, heads, dim)."""
    position_ids = kwargs.get("position_ids")
    plain = attention_mask is None and query.shape[2] == key.shape[2] and dropout == 0.0
    spans = sample_spans(position_ids, query.shape) if plain else None
    if spans is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    grouped = query.shape[1] != key.shape[1]
    rows = []
    for row, row_spans in enumerate(spans):
        pieces = [
            F.scaled_dot_product_attention(
                query[row : row + 1, :, start:end],
                key[row : row + 1, :, start:end],
                value[row : row + 1, :, start:end],
                is_causal=True,
                scale=scaling,
                enable_gqa=grouped,
            )
            for start, end in row_spans
        ]
        rows.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2))
    output = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return output.transpose(1, 2).contiguous(), None


def sample_spans(
    position_ids: torch.Tensor | None, shape: torch.Size
) -> list[list[tuple[int, int]]] | None:
    """Per row, the (start, end) of each run of consecutive positions; None when unknown.

    A new sample starts wherever a position is not its predecessor plus one, as in
    transformers' own detection of packed rows.
    """
    if position_ids is None or position_ids.shape[-1] != shape[2]:
        return None
    positions = position_ids.expand(shape[0], -1)
    starts: list[list[int]] = [[0] for _ in range(shape[0])]
    for row, before in (torch.diff(positions, dim=-1) != 1).nonzero().tolist():
        starts[row].append(before + 1)
    return [list(zip(row, [*row[1:], shape[2]], strict=True)) for row in starts]


def packed_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """No mask when there is no padding mask: the attention reads samples from position ids."""
    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def supports(config: Any) -> bool:
    """Full causal attention in every layer: no sliding windows, no other layer kinds."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is None


def use_packed_attention(model: nn.Module) -> bool:
    """Switch a model from SDPA to the per-sample attention; False when it does not apply."""
    config = getattr(model, "config", None)
    if config is None or config._attn_implementation != "sdpa" or not supports(config):
        return False
    AttentionInterface.register(NAME, packed_causal_attention)
    AttentionMaskInterface.register(NAME, packed_mask)
    config._attn_implementation = NAME
    return True
