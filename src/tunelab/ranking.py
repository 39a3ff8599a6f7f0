"""Candidate answers ranked by the model's probability, by a best-first search over their
token trie.

A candidate's score is log P(its tokens, then one of the ``boundary`` tokens | prompt). Every
token can only lower a score, so a prefix's score bounds every candidate below it in the
trie: expanding the best open prefix first, the first ``depth`` candidates that come out
complete are exactly the top ``depth``, while branches that cannot reach them are never
computed. The prompt runs once; each round expands the best open prefixes together, on
copies of the prompt's key/value cache.
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class _Node:
    """A trie node: the token path to it, its children, the candidates that end here, and,
    once expanded, the key/value entries of its own (last) token in every layer."""

    path: tuple[int, ...]
    parent: _Node | None = None
    children: dict[int, _Node] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # every candidate at or below
    own: torch.Tensor | None = None  # (layers, 2, heads, dim): this token's keys and values

    def path_entries(self) -> list[torch.Tensor]:
        """The stored entries of the path's tokens before this node's own, in order."""
        entries, node = [], self.parent
        while node is not None and node.own is not None:
            entries.append(node.own)
            node = node.parent
        return entries[::-1]


def rank_candidates(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    candidates: Sequence[str],
    boundary: Sequence[int],
    depth: int = 10,
    chunk: int = 64,
) -> list[tuple[str, float]]:
    """Candidates by log P(candidate, then a ``boundary`` token | prompt), best first.

    The boundary (the end of the answer, or a separator after a field) stops a candidate
    that is a prefix of another from scoring as if it were the longer one. The first
    ``depth`` places are exact; the rest are ordered by the best bound the search reached
    (an exact score where it got there). ``chunk`` prefixes are expanded per forward pass.
    """
    root = _trie(tokenizer, candidates)
    search = _Search(model, prompt, list(boundary), chunk)
    exact = search.run(root, depth)
    return _ordered(candidates, exact, search.bounds(root))


def _trie(tokenizer: Any, candidates: Sequence[str]) -> _Node:
    root = _Node(())
    for index, text in enumerate(candidates):
        node = root
        node.members.append(index)
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            node = node.children.setdefault(token, _Node((*node.path, token), node))
            node.members.append(index)
        node.ends.append(index)
    return root


class _Search:
    """The best-first search: open prefixes and complete candidates in one heap."""

    def __init__(self, model: Any, prompt: list[int], boundary: list[int], chunk: int) -> None:
        self.model, self.boundary, self.chunk = model, boundary, chunk
        self.device = next(model.parameters()).device
        self.prompt_length = len(prompt)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        self.cache = out.past_key_values
        self.first = out.logits[0, -1].float().log_softmax(-1).cpu()
        self.heap: list[tuple[float, int, Any, Any]] = []
        self.order = itertools.count()  # ties keep the order they were found in
        self.open_scores: dict[tuple[int, ...], float] = {}

    def run(self, root: _Node, depth: int) -> dict[int, float]:
        """The exact scores of the best ``depth`` candidates (fewer if there are fewer)."""
        self._open(root, 0.0, self.first)
        exact: dict[int, float] = {}
        while self.heap and len(exact) < depth:
            negative, _, kind, item = heapq.heappop(self.heap)
            if kind == "end":
                exact[item] = -negative
                continue
            nodes = [(item, -negative), *self._more_nodes()]
            for (node, score), logprobs in zip(nodes, self._expand(nodes), strict=True):
                self._open(node, score, logprobs)
        return exact

    def bounds(self, root: _Node) -> dict[int, float]:
        """For each candidate the best bound the search reached on its path."""
        bound = {index: float("-inf") for index in root.members}
        for negative, _, kind, item in self.heap:
            members = [item] if kind == "end" else item.members
            for index in members:
                bound[index] = max(bound[index], -negative)
        return bound

    def _open(self, node: _Node, score: float, logprobs: torch.Tensor) -> None:
        """Push ``node``'s children (scored with its next-token log-probabilities) and its
        complete candidates (scored with the boundary)."""
        if node.ends:
            end = score + float(torch.logsumexp(logprobs[self.boundary], 0))
            for index in node.ends:
                heapq.heappush(self.heap, (-end, next(self.order), "end", index))
        for token, child in node.children.items():
            child_score = score + float(logprobs[token])
            heapq.heappush(self.heap, (-child_score, next(self.order), "node", child))

    def _more_nodes(self) -> list[tuple[_Node, float]]:
        """The next best open prefixes, to expand in the same pass."""
        taken, held = [], []
        while self.heap and len(taken) < self.chunk - 1:
            negative, order, kind, item = heapq.heappop(self.heap)
            if kind == "node":
                taken.append((item, -negative))
            else:
                held.append((negative, order, kind, item))
        for entry in held:
            heapq.heappush(self.heap, entry)
        return taken

    def _expand(self, nodes: list[tuple[_Node, float]]) -> list[torch.Tensor]:
        """The next-token log-probabilities after each node's path, in one forward pass of
        one token per node: the path before it comes from its ancestors' stored entries."""
        rows = [node for node, _ in nodes]
        longest = max(len(node.path) - 1 for node in rows)
        cache = self._cache_for(rows, longest)
        ids = torch.tensor([[node.path[-1]] for node in rows], device=self.device)
        mask = torch.zeros(len(rows), self.prompt_length + longest + 1, dtype=torch.long)
        mask[:, : self.prompt_length] = 1
        for row, node in enumerate(rows):  # the padding after a short path is masked out
            mask[row, self.prompt_length : self.prompt_length + len(node.path) - 1] = 1
        mask[:, -1] = 1
        positions = torch.tensor([[self.prompt_length + len(n.path) - 1] for n in rows])
        with torch.no_grad():
            out = self.model(
                input_ids=ids,
                attention_mask=mask.to(self.device),
                past_key_values=cache,
                position_ids=positions.to(self.device),
                use_cache=True,
            )
        layers = out.past_key_values.layers
        # (layers, 2, rows, heads, dim): each row's new token, kept for its children
        fresh = torch.stack(
            [torch.stack([layer.keys[:, :, -1], layer.values[:, :, -1]]) for layer in layers]
        )
        for row, node in enumerate(rows):
            node.own = fresh[:, :, row]
        return list(out.logits[:, -1].float().log_softmax(-1).cpu())

    def _cache_for(self, rows: list[_Node], longest: int) -> Any:
        """The prompt's cache repeated per row, each row's path entries after it, padded."""
        cache = copy.deepcopy(self.cache)
        if longest == 0:
            for layer in cache.layers:
                layer.keys = layer.keys.expand(len(rows), -1, -1, -1).contiguous()
                layer.values = layer.values.expand(len(rows), -1, -1, -1).contiguous()
            return cache
        template = next(n.parent.own for n in rows if n.parent and n.parent.own is not None)
        paths = torch.stack([_padded(node.path_entries(), longest, template) for node in rows])
        # (rows, length, layers, 2, heads, dim) -> per layer (rows, heads, length, dim)
        paths = paths.permute(2, 3, 0, 4, 1, 5)
        for index, layer in enumerate(cache.layers):
            prompt_keys = layer.keys.expand(len(rows), -1, -1, -1)
            prompt_values = layer.values.expand(len(rows), -1, -1, -1)
            layer.keys = torch.cat([prompt_keys, paths[index, 0]], dim=2)
            layer.values = torch.cat([prompt_values, paths[index, 1]], dim=2)
        return cache


def _padded(entries: list[torch.Tensor], width: int, like: torch.Tensor) -> torch.Tensor:
    """A path's entries stacked to ``width`` tokens: (width, layers, 2, heads, dim)."""
    padding = [like.new_zeros(like.shape)] * (width - len(entries))
    return torch.stack([*entries, *padding])


def _ordered(
    candidates: Sequence[str], exact: dict[int, float], bounds: dict[int, float]
) -> list[tuple[str, float]]:
    best = sorted(exact, key=lambda i: -exact[i])
    rest = sorted((i for i in bounds if i not in exact), key=lambda i: -bounds[i])
    return [(candidates[i], exact[i]) for i in best] + [(candidates[i], bounds[i]) for i in rest]


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
