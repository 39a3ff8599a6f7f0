"""Encoded samples -> padded or packed tensors, and the order samples are visited in.

Packing places several samples in one row with position ids restarting at 0 for each
sample and no attention mask: transformers then derives a block-diagonal mask from the
position ids, so no sample attends to another and per-sample losses equal unpacked ones.
Where the attention computes each sample on its own (``cpu.attention.use_cpu_attention``), a
forward pass is one row holding as many samples as its token budget allows, no padding at
all, and the batch says where each sample starts (``cu_seq_lens``, as flash-attn takes them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.data.encode import IGNORE_INDEX, Encoded


@dataclass
class Batch:
    """Model inputs plus the counts that throughput and loss normalisation need.

    ``targets`` is how many loss terms the batch holds: target tokens for a language-model
    loss (labels are shifted by one inside it), rows for a class head.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    real_tokens: int
    targets: int
    cu_seq_lens: torch.Tensor | None = None

    @property
    def attention_kwargs(self) -> dict[str, Any]:
        """What the model's attention is told of the samples in the row (nothing if padded)."""
        if self.cu_seq_lens is None:
            return {}
        longest = int((self.cu_seq_lens[1:] - self.cu_seq_lens[:-1]).max())
        return {
            "cu_seq_lens_q": self.cu_seq_lens,
            "cu_seq_lens_k": self.cu_seq_lens,
            "max_length_q": longest,
            "max_length_k": longest,
        }

    @property
    def padded_tokens(self) -> int:
        """Tokens the model computes over, padding included."""
        return self.input_ids.numel()

    def to(self, device: torch.device) -> Batch:
        """The same batch on ``device``."""
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        starts = None if self.cu_seq_lens is None else self.cu_seq_lens.to(device)
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.position_ids.to(device),
            mask,
            self.real_tokens,
            self.targets,
            starts,
        )


def forward_batches(
    samples: Sequence[Encoded],
    pad_id: int,
    pack_length: int | None,
    token_budget: int,
    segmented: bool = False,
) -> list[Batch]:
    """Split samples into as few forward passes as hold at most ``token_budget`` padded tokens.

    With a loss summed over tokens and divided by the step's target tokens, how the
    samples of a step fall into passes does not change the gradient, only the speed.
    ``segmented`` (packing only): one unpadded row per pass, for an attention that takes
    ``Batch.attention_kwargs``; a sample longer than the budget gets a row of its own.
    """
    if pack_length is not None and segmented:
        return [_segmented(row) for row in balanced_rows(samples, token_budget) if row]
    if pack_length is None:
        ordered = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)
        return [
            _padded(group, pad_id) for group in fit_budget([[s] for s in ordered], token_budget)
        ]
    # rows no longer than the longest sample: attention cost grows with the square of the
    # row length, so longer rows would cost more than padding saves
    longest = max(len(s.input_ids) for s in samples)
    rows = pack_first_fit(samples, min(pack_length, longest))
    return [_packed(group, pad_id) for group in fit_budget(rows, token_budget)]


def collate(samples: Sequence[Encoded], pad_id: int, pack_length: int | None) -> Batch:
    """One batch: samples packed into rows of at most ``pack_length`` tokens, or padded (None)."""
    if pack_length is None:
        return _padded(samples, pad_id)
    return _packed(pack_first_fit(samples, pack_length), pad_id)


def fit_budget(rows: list[list[Encoded]], budget: int) -> list[list[list[Encoded]]]:
    """Group rows, longest first, so that rows x width of each group stays within budget."""
    groups: list[list[list[Encoded]]] = []
    width = 0
    for row in sorted(rows, key=_row_length, reverse=True):
        grown = max(width, _row_length(row))
        if groups and grown * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(row)
            width = grown
        else:
            groups.append([row])
            width = _row_length(row)
    return groups


def _row_length(row: list[Encoded]) -> int:
    return sum(len(s.input_ids) for s in row)


def _packed(rows: list[list[Encoded]], pad_id: int) -> Batch:
    width = max(_row_length(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for sample in row:
            end = start + len(sample.input_ids)
            ids[r, start:end] = torch.tensor(sample.input_ids)
            labels[r, start:end] = torch.tensor(_own_labels(sample))
            positions[r, start:end] = torch.arange(end - start)
            start = end
        # the tail of a row is its own short "sample" so it never joins the last one
        positions[r, start:] = torch.arange(width - start)
    real = sum(_row_length(row) for row in rows)
    return Batch(ids, labels, positions, None, real, _shifted_targets(labels))


def _segmented(row: list[Encoded]) -> Batch:
    ids, positions, starts = segment_row([s.input_ids for s in row])
    labels = torch.tensor([[t for s in row for t in _own_labels(s)]])
    return Batch(ids, labels, positions, None, ids.numel(), _shifted_targets(labels), starts)


def segment_row(
    token_lists: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token lists laid end to end in one row: (ids, positions restarting at 0 for each, and
    where each starts, with the row's end last: ``cu_seq_lens``)."""
    lengths = torch.tensor([len(tokens) for tokens in token_lists])
    ids = torch.tensor([[t for tokens in token_lists for t in tokens]])
    positions = torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0)
    starts = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    return ids, positions, starts


def consecutive_rows(samples: Sequence[Any], capacity: int) -> list[list[Any]]:
    """``samples`` cut, in their order, into runs of at most ``capacity`` tokens (a longer
    sample is a run of its own).

    >>> from tunelab.data.encode import Encoded
    >>> rows = consecutive_rows([Encoded([0] * n, [0] * n, n) for n in [6, 5, 4, 3, 2]], 9)
    >>> [[len(s.input_ids) for s in row] for row in rows]
    [[6], [5, 4], [3, 2]]
    """
    rows: list[list[Any]] = []
    size = capacity
    for sample in samples:
        length = len(sample.input_ids)
        if size + length > capacity:
            rows.append([])
            size = 0
        rows[-1].append(sample)
        size += length
    return rows


def balanced_rows(samples: Sequence[Encoded], capacity: int) -> list[list[Encoded]]:
    """As few rows of at most ``capacity`` tokens as a greedy fill finds, evened out: each
    sample, longest first, goes to the shortest row. Even rows keep a pass's activations,
    and so peak memory, at the step's mean rather than at the capacity.

    >>> from tunelab.data.encode import Encoded
    >>> rows = balanced_rows([Encoded([0] * n, [0] * n, n) for n in [6, 5, 4, 3, 2]], 12)
    >>> [[len(s.input_ids) for s in row] for row in rows]
    [[6, 3, 2], [5, 4]]
    """
    ordered = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)
    total = sum(len(s.input_ids) for s in ordered)
    count = max(1, -(-total // capacity))
    while True:
        rows: list[list[Encoded]] = [[] for _ in range(count)]
        sizes = [0] * count
        for sample in ordered:
            shortest = sizes.index(min(sizes))
            rows[shortest].append(sample)
            sizes[shortest] += len(sample.input_ids)
        if max(sizes) <= capacity or count >= len(ordered):
            return rows
        count += 1


def pack_first_fit(samples: Sequence[Encoded], capacity: int) -> list[list[Encoded]]:
    """Longest first, each into the first row with room (first-fit decreasing).

    >>> from tunelab.data.encode import Encoded
    >>> sizes = [3, 5, 2, 4]
    >>> rows = pack_first_fit([Encoded([0] * n, [0] * n, n) for n in sizes], 7)
    >>> [[len(s.input_ids) for s in row] for row in rows]
    [[5, 2], [4, 3]]
    """
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for sample in sorted(samples, key=lambda s: len(s.input_ids), reverse=True):
        size = len(sample.input_ids)
        slot = next((i for i, free in enumerate(room) if free >= size), None)
        if slot is None:
            rows.append([sample])
            room.append(capacity - size)
        else:
            rows[slot].append(sample)
            room[slot] -= size
    return rows


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation fixed by (seed, epoch), so resume is exact."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


def micro_batches(
    samples: Sequence[Encoded], batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> Iterator[list[Encoded]]:
    """Successive micro-batches of one epoch, in the epoch's fixed order (or file order)."""
    order = epoch_order(len(samples), seed, epoch) if shuffle else list(range(len(samples)))
    for start in range(0, len(order), batch_size):
        yield [samples[i] for i in order[start : start + batch_size]]


def _padded(samples: Sequence[Encoded] | list[list[Encoded]], pad_id: int) -> Batch:
    samples = [s[0] if isinstance(s, list) else s for s in samples]
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for r, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[r, :n] = torch.tensor(sample.input_ids)
        labels[r, :n] = torch.tensor(sample.labels)
        mask[r, :n] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    real = sum(len(s.input_ids) for s in samples)
    return Batch(ids, labels, positions, mask, real, _shifted_targets(labels))


def _shifted_targets(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def _own_labels(sample: Encoded) -> list[int]:
    """A sample's labels with its first one ignored: in a packed row that position would be
    predicted from the previous sample's last token."""
    return [IGNORE_INDEX, *sample.labels[1:]]
