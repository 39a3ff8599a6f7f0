"""Batched generation: prompts sorted by length, left padding, KV cache, greedy by default."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy completions of tokenised prompts, in the order given.

    Prompts of similar length share a batch, so little of each batch is padding.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        ids, mask = _left_padded([prompts[i] for i in chosen], tokenizer.pad_token_id)
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = generated[:, ids.shape[1] :]
        for index, row in zip(chosen, new_tokens, strict=True):
            outputs[index] = tokenizer.decode(row, skip_special_tokens=True)
        if on_batch is not None:
            on_batch(len(chosen))
    return outputs


def _left_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    return ids, mask
