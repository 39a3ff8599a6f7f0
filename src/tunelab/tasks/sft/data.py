"""Instruction SFT data: chats in, encoded with the model's template, assistant tokens
labelled."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.batching import Batch, forward_batches
from tunelab.data.encode import Encoded, EncodeError, encode_chat
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


@dataclass
class PreparedData:
    """The encoded train and val sets of a run, and the report of how they were made."""

    train: EncodedSet
    val: EncodedSet
    report: dict[str, Any]
    labels: list[str] = field(default_factory=list)  # answers are free text: no label set

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
