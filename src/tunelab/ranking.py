"""Candidate answers ranked by the model's probability, by a search over their token trie.

A candidate's score is log P(its tokens, then one of the ``boundary`` tokens | prompt). Every
token can only lower a score, so a prefix's score bounds every candidate below it: once
``depth`` candidates are complete, a prefix scoring at or below the ``depth``-th of them
cannot lead into the top ``depth`` and is never computed. A short beam search down the trie
finds good candidates first, so that this threshold prunes from the start; then every open
prefix above it is expanded, best first, many per forward pass.

Every expanded prefix is one token of a single growing sequence after the prompt (tree
attention): its key/value entries are computed once, and each new token attends to the
prompt and to its own ancestors only, at the position its path gives it. A pass reads only
the entries some token in it may see (the prompt, its tokens' ancestors, itself) and masks
within those: attending over the whole sequence and masking it away cost a sixth of the
search once a thousand prefixes were in it.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from tunelab.cpu.attention import CPU_ATTENTION

SMALL_SUBTREE = 4  # candidates at most below a node whose whole subtree one pass computes


@dataclass(eq=False)
class _Node:
    """A trie node: the token path to it, its children, the candidates that end here and
    every candidate at or below it; once expanded, where its token sits in the sequence."""

    path: tuple[int, ...]
    parent: _Node | None = None
    children: dict[int, _Node] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    slot: int | None = None

    def ancestor_slots(self) -> list[int]:
        """The sequence positions of the path's tokens before this node's own."""
        slots, node = [], self.parent
        while node is not None and node.slot is not None:
            slots.append(node.slot)
            node = node.parent
        return slots


class _Columns:
    """The sequence positions the current pass reads, shared by every layer's cache
    (``None``: all of them, as for the prompt's own pass)."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None


class _TreeLayer(CacheLayerMixin):
    """One layer's keys and values of the whole sequence, in a buffer that doubles when
    full; ``update`` stores the pass's entries and returns only the columns it reads."""

    is_sliding = False
    is_compileable = False

    def __init__(self, columns: _Columns) -> None:
        super().__init__()
        self.columns, self.length = columns, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.keys.shape[-2]:
            self.keys, self.values = _grown(self.keys, end), _grown(self.values, end)
        self.keys[..., self.length : end, :] = key_states
        self.values[..., self.length : end, :] = value_states
        self.length = end
        if self.columns.index is None:
            return self.keys[..., :end, :], self.values[..., :end, :]
        index = self.columns.index
        return self.keys.index_select(-2, index), self.values.index_select(-2, index)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1


def _grown(buffer: torch.Tensor, needed: int) -> torch.Tensor:
    shape = list(buffer.shape)
    shape[-2] = max(needed, 2 * shape[-2])
    grown = buffer.new_empty(shape)
    grown[..., : buffer.shape[-2], :] = buffer
    return grown


def _tree_cache(columns: _Columns) -> Cache:
    return Cache(layer_class_to_replicate=functools.partial(_TreeLayer, columns))


def rank_candidates(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    candidates: Sequence[str],
    boundary: Sequence[int],
    depth: int = 10,
    chunk: int = 128,
) -> list[tuple[str, float]]:
    """Candidates by log P(candidate, then a ``boundary`` token | prompt), best first.

    The boundary (the end of the answer, or a separator after a field) stops a candidate
    that is a prefix of another from scoring as if it were the longer one. The first
    ``depth`` places are exact; the rest are ordered by the best bound the search reached
    (an exact score where it got there). At most ``chunk`` prefixes go into one forward pass.
    """
    root = _shared_stem(_trie(tokenizer, candidates))
    search = _Search(model, prompt, root.path, list(boundary), depth, max(chunk, 1))
    search.run(root)
    return _ordered(candidates, search.exact, search.bounds(root), depth)


def _trie(tokenizer: Any, candidates: Sequence[str]) -> _Node:
    root = _Node(())
    for index, tokens in enumerate(_candidate_tokens(tokenizer, tuple(candidates))):
        node = root
        node.members.append(index)
        for token in tokens:
            node = node.children.setdefault(token, _Node((*node.path, token), node))
            node.members.append(index)
        node.ends.append(index)
    return root


def _shared_stem(root: _Node) -> _Node:
    """The deepest node every candidate passes through: its path is computed with the
    prompt, in one pass."""
    node = root
    while len(node.children) == 1 and not node.ends:
        node = next(iter(node.children.values()))
    return node


def _small_subtree(node: _Node, few: int = SMALL_SUBTREE) -> list[_Node]:
    """``node``, then, if at most ``few`` candidates lie below it, every node below it
    (each after its parent)."""
    if len(node.members) > few:
        return [node]
    rows, stack = [], [node]
    while stack:
        rows.append(stack.pop())
        stack.extend(reversed(list(rows[-1].children.values())))
    return rows


class _Search:
    """Open prefixes in a heap by score; complete candidates with their exact scores."""

    def __init__(
        self,
        model: Any,
        prompt: list[int],
        stem: tuple[int, ...],
        boundary: list[int],
        depth: int,
        chunk: int,
    ) -> None:
        self.model, self.boundary, self.depth, self.chunk = model, boundary, depth, chunk
        self.device = next(model.parameters()).device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.prompt_length = len(prompt)  # a node's position: this plus its path's length
        sequence = torch.tensor([[*prompt, *stem]], device=self.device)
        self.columns = _Columns()
        self.cache = _tree_cache(self.columns)
        with torch.no_grad():
            out = model(
                input_ids=sequence,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=len(stem) + 1,
            )
        logprobs = out.logits[0].float().log_softmax(-1).cpu()
        self.stem_score = sum(float(logprobs[i, token]) for i, token in enumerate(stem))
        self.first = logprobs[-1]
        self.length = sequence.shape[1]  # tokens in the sequence so far
        self.visible = self.length  # the prompt and the stem: every token attends to them
        implementation = getattr(model.config, "_attn_implementation", "eager")
        self.boolean_mask = implementation in ("sdpa", CPU_ATTENTION)
        self.open: list[tuple[float, int, _Node]] = []
        self.order = itertools.count()  # ties keep the order they were found in
        self.exact: dict[int, float] = {}
        self.best: list[float] = []  # min-heap of the best ``depth`` exact scores

    @property
    def threshold(self) -> float:
        """The score a prefix must beat to matter: the ``depth``-th best complete one."""
        return self.best[0] if len(self.best) >= self.depth else float("-inf")

    def run(self, root: _Node) -> None:
        """Score candidates until the top ``depth`` are exact."""
        beam = self._open(root, self.stem_score, self.first)
        while beam and len(self.best) < self.depth:
            beam = self._beam_step(beam)
        while self.open and -self.open[0][0] > self.threshold:
            nodes = []
            while self.open and len(nodes) < self.chunk and -self.open[0][0] > self.threshold:
                negative, _, node = heapq.heappop(self.open)
                if node.slot is None:
                    nodes.append((node, -negative))
            if nodes:
                self._expand_all(nodes)

    def bounds(self, root: _Node) -> dict[int, float]:
        """For each candidate the best bound the search reached on its path."""
        bound = {index: float("-inf") for index in root.members}
        for negative, _, node in self.open:
            for index in node.members:
                bound[index] = max(bound[index], -negative)
        return bound

    def _beam_step(self, beam: list[tuple[_Node, float]]) -> list[tuple[_Node, float]]:
        """Expand the best open children of the last step, as many as candidates are
        still missing from the top (at least two)."""
        width = max(self.depth - len(self.best), 2)
        chosen = sorted(beam, key=lambda item: -item[1])[:width]
        return self._expand_all(chosen)

    def _expand_all(self, nodes: list[tuple[_Node, float]]) -> list[tuple[_Node, float]]:
        """Expand ``nodes`` in one pass; returns the children opened and not expanded.

        A pass with room left also takes the whole subtree of the best nodes that lead to
        few candidates: a pass costs about as much as thirty more tokens in it, and such a
        subtree would otherwise take a pass per level.
        """
        rows = [node for node, _ in nodes]
        for node, _ in nodes:
            below = _small_subtree(node)[1:]
            if len(rows) + len(below) <= self.chunk:
                rows += below
        scores = dict(nodes)
        opened = []
        for node, logprobs in zip(rows, self._expand(rows), strict=True):
            for child, child_score in self._open(node, scores[node], logprobs):
                if child.slot is None:
                    opened.append((child, child_score))
                else:
                    scores[child] = child_score
        return opened

    def _open(self, node: _Node, score: float, logprobs: torch.Tensor) -> list[tuple[_Node, float]]:
        """Score ``node``'s complete candidates (with the boundary) and open its children
        (with its next-token log-probabilities)."""
        if node.ends:
            end = score + float(torch.logsumexp(logprobs[self.boundary], 0))
            for index in node.ends:
                self.exact[index] = end
                heapq.heappush(self.best, end)
                if len(self.best) > self.depth:
                    heapq.heappop(self.best)
        children = []
        for token, child in node.children.items():
            child_score = score + float(logprobs[token])
            if child.slot is None:  # not computed in the same pass
                heapq.heappush(self.open, (-child_score, next(self.order), child))
            children.append((child, child_score))
        return children

    def _expand(self, rows: list[_Node]) -> list[torch.Tensor]:
        """The next-token log-probabilities after each node's path: one forward pass that
        appends each node's token to the sequence, attending to the prompt and its
        ancestors (earlier in the sequence or in this pass)."""
        count, before = len(rows), self.length
        for row, node in enumerate(rows):
            node.slot = before + row
        seen = [[*node.ancestor_slots(), node.slot] for node in rows]
        earlier = sorted({slot for slots in seen for slot in slots if slot < before})
        read = [*range(self.visible), *earlier, *range(before, before + count)]
        column = {slot: i for i, slot in enumerate(read)}
        mask = torch.zeros((1, 1, count, len(read)), dtype=torch.bool)
        mask[..., : self.visible] = True
        for row, slots in enumerate(seen):
            mask[0, 0, row, [column[slot] for slot in slots]] = True
        ids = torch.tensor([[node.path[-1] for node in rows]], device=self.device)
        positions = torch.tensor([[self.prompt_length + len(n.path) - 1 for n in rows]])
        self.columns.index = torch.tensor(read, device=self.device)
        with torch.no_grad():
            out = self.model(
                input_ids=ids,
                attention_mask=self._for_attention(mask),
                past_key_values=self.cache,
                position_ids=positions.to(self.device),
                use_cache=True,
            )
        self.length += count
        return list(out.logits[0].float().log_softmax(-1).cpu())

    def _for_attention(self, allowed: torch.Tensor) -> torch.Tensor:
        """The mask as the model's attention takes it: SDPA reads a boolean mask as it is
        (and keeps grouped heads grouped); the others add it to the scores."""
        if self.boolean_mask:
            return allowed.to(self.device)
        blocked = torch.finfo(self.dtype).min
        additive = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill(~allowed, blocked)
        return additive.to(self.device)


@functools.lru_cache(maxsize=1)  # an evaluation ranks the same candidates after every prompt
def _candidate_tokens(tokenizer: Any, candidates: tuple[str, ...]) -> list[list[int]]:
    """Each candidate's tokens, in one batch call."""
    return tokenizer(list(candidates), add_special_tokens=False)["input_ids"]


def _ordered(
    candidates: Sequence[str], exact: dict[int, float], bounds: dict[int, float], depth: int
) -> list[tuple[str, float]]:
    best = sorted(exact, key=lambda i: -exact[i])[:depth]
    chosen = set(best)
    rest = {i: max(bounds[i], exact.get(i, float("-inf"))) for i in bounds if i not in chosen}
    return [(candidates[i], exact[i]) for i in best] + [
        (candidates[i], rest[i]) for i in sorted(rest, key=lambda i: -rest[i])
    ]


def label_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    labels: Sequence[str],
    end_token: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each label (with its end token) after each prompt.

    Returns (summed log-probabilities, token counts), each of shape [prompts, labels]. The
    sum favours short labels (every extra token can only lower it); divide by the counts
    for a length-normalised score, or decode constrained to the labels (first differing
    token decides) for a rule that does not look at length at all.
    """
    end = tokenizer.eos_token_id if end_token is None else end_token
    sums = torch.zeros(len(prompts), len(labels))
    for p, prompt in enumerate(prompts):
        scored = dict(rank_candidates(model, tokenizer, prompt, labels, [end], len(labels)))
        sums[p] = torch.tensor([scored[label] for label in labels])
    lengths = [len(tokenizer(label, add_special_tokens=False)["input_ids"]) + 1 for label in labels]
    counts = torch.tensor(lengths, dtype=torch.float).expand(len(prompts), -1)
    return sums, counts.clone()
