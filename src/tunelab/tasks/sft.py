"""Instruction SFT: chats in, next-token loss on assistant tokens only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.config import DataConfig
from tunelab.data.batching import Batch, forward_batches
from tunelab.data.encode import IGNORE_INDEX, Encoded, EncodeError, encode_chat
from tunelab.data.formats import Example
from tunelab.data.prepare import (
    check_strict,
    describe_rejects,
    file_reports,
    length_stats,
    load_train_val,
)
from tunelab.data.readers import Reject
from tunelab.errors import TunelabError
from tunelab.models import adapted_model

# logits held at once by the loss: 256 MiB is 441 positions of Qwen3's 151,936-entry vocabulary
LOSS_CHUNK_BYTES = 256 * 2**20


@dataclass
class EncodedSet:
    """A split after tokenisation: the samples kept, and the counts a report needs."""

    samples: list[Encoded] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    max_length: int = 0

    @property
    def truncated(self) -> int:
        """Samples longer than ``max_length``: cut and kept, or rejected when cutting left
        nothing to learn."""
        return sum(length > self.max_length for length in self.lengths)


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_length: int) -> EncodedSet:
    """Encode each example; one that cannot be encoded becomes a reject, never vanishes."""
    result = EncodedSet(max_length=max_length)
    for example in examples:
        try:
            sample = encode_chat(tokenizer, example.messages, max_length)
        except EncodeError as error:
            result.rejects.append(Reject(example.source, None, str(error)))
            if error.full_length:
                result.lengths.append(error.full_length)
            continue
        result.samples.append(sample)
        result.examples.append(example)
        result.lengths.append(sample.full_length)
    return result


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


@dataclass
class PreparedData:
    """The encoded train and val sets of a run, and the report of how they were made."""

    train: EncodedSet
    val: EncodedSet
    report: dict[str, Any]

    @property
    def rejects(self) -> list[Reject]:
        """Every row rejected, whether by its file, its format or its encoding."""
        return self.train.rejects + self.val.rejects


def prepare_sft(data: DataConfig, tokenizer: Any) -> PreparedData:
    """Load, validate, split and encode the run's data; strict mode fails on any reject."""
    train_loaded, val_loaded, val_origin = load_train_val(data)
    train = encode_examples(tokenizer, train_loaded.examples, data.max_length)
    val = encode_examples(tokenizer, val_loaded.examples, data.max_length)
    train.rejects[:0] = train_loaded.rejects
    val.rejects[:0] = val_loaded.rejects
    check_strict(train.rejects + val.rejects, data.strict)
    if not train.samples:
        raise TunelabError(
            f"no usable training rows: all {len(train.rejects)} were rejected:\n"
            f"{describe_rejects(train.rejects)}"
        )
    report = {
        "max_length": data.max_length,
        "files": file_reports(train_loaded) + file_reports(val_loaded),
        "train": split_summary(train),
        "val": {**split_summary(val), "origin": val_origin},
    }
    return PreparedData(train, val, report)


def split_summary(encoded: EncodedSet) -> dict[str, Any]:
    """Kept / rejected / truncated counts and token-length percentiles of one split."""
    return {
        "kept": len(encoded.samples),
        "rejected": len(encoded.rejects),
        "truncated": encoded.truncated,
        "tokens": length_stats(encoded.lengths),
        "target_tokens": sum(s.target_tokens for s in encoded.samples),
    }


def sft_batcher(
    data: DataConfig, forward_tokens: int, pad_id: int, segmented: bool = False
) -> Callable[[Sequence[Encoded]], list[Batch]]:
    """Samples -> forward passes: packed (or padded) rows within the token budget; with
    ``segmented`` (the model's attention takes sample boundaries), one unpadded row each."""
    pack_length = data.max_length if data.packing else None

    def batches(samples: Sequence[Encoded]) -> list[Batch]:
        return forward_batches(samples, pad_id, pack_length, forward_tokens, segmented)

    return batches
