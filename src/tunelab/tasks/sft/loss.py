"""The SFT loss: next-token cross-entropy on labelled positions only, the LM head applied
chunk by chunk."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.data.batching import Batch
from tunelab.data.encode import IGNORE_INDEX
from tunelab.models.load import adapted_model

# logits held at once by the loss: 256 MiB is 441 positions of Qwen3's 151,936-entry vocabulary
LOSS_CHUNK_BYTES = 256 * 2**20


class CausalLMLoss(nn.Module):
    """Summed next-token cross-entropy over labelled positions, and their count.

    The LM head runs only where a label exists, chunk by chunk; with a 152k vocabulary the
    logits of prompt tokens would otherwise be the largest tensor of the step. Being a
    module, it is what gets wrapped for data parallelism, so DDP sees a normal forward.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (sum of losses, number of target tokens) for the batch."""
        causal_lm = adapted_model(self.model)
        hidden = causal_lm.get_decoder()(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **batch.attention_kwargs,
        ).last_hidden_state
        targets = batch.labels[:, 1:]
        keep = targets != IGNORE_INDEX
        return chunked_cross_entropy(
            hidden[:, :-1][keep], targets[keep], causal_lm.get_output_embeddings()
        )


def chunked_cross_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of cross-entropies of ``head(hidden)`` against ``targets``, ``chunk`` rows at a time.

    For a plain bias-free head (the LM heads of Llama and Qwen models) the gradient is
    computed chunk by chunk during the forward pass and only it is kept, so peak memory
    holds one chunk of logits and no logits are recomputed. Any other head goes through
    autograd, each chunk's logits recomputed in backward.
    """
    count = torch.tensor(targets.numel(), device=hidden.device)
    if chunk is None:
        chunk = max(1, LOSS_CHUNK_BYTES // (4 * _out_features(head)))
    if type(head) is nn.Linear and head.bias is None:
        return LinearCrossEntropy.apply(hidden, head.weight, targets, chunk), count
    if targets.numel() <= chunk:
        return _head_loss(head, hidden, targets), count
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(
            _head_loss, head, hidden[part], targets[part], use_reentrant=False
        )
    return total, count


class LinearCrossEntropy(torch.autograd.Function):
    """``sum(cross_entropy(hidden @ weight.T, targets))``, its gradients made in forward.

    d loss / d logits is softmax minus the one-hot target, so each chunk's logits turn into
    the chunk's share of the gradients at once and are dropped.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        wants_hidden, wants_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.numel(), chunk):
            rows, wanted = hidden[start : start + chunk], targets[start : start + chunk, None]
            logits = (rows @ weight.t()).float()
            wanted_logits = logits.gather(1, wanted)
            # logsumexp by hand, in place: torch.logsumexp would hold a second chunk-sized tensor
            maxima = logits.amax(dim=-1, keepdim=True)
            exponentials = logits.sub_(maxima).exp_()
            sums = exponentials.sum(dim=-1, keepdim=True)
            total += (sums.log() + maxima - wanted_logits).sum()
            if not (wants_hidden or wants_weight):
                continue
            grad_logits = exponentials.div_(sums)
            grad_logits.scatter_add_(1, wanted, torch.full_like(wanted, -1, dtype=torch.float32))
            grad_logits = grad_logits.to(weight.dtype)
            if wants_hidden:
                grad_hidden[start : start + chunk] = grad_logits @ weight
            if wants_weight:
                grad_weight += (grad_logits.t() @ rows.to(weight.dtype)).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def _out_features(head: nn.Module) -> int:
    weight = getattr(head, "weight", None)
    return weight.shape[0] if weight is not None else 1


def _head_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")
