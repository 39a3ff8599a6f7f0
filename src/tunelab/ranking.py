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
    """A trie node: the token path to it, its children, the candidates that end here."""

    path: tuple[int, ...]
    children: dict[int, _Node] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # every candidate at or below


def rank_candidates(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    candidates: Sequence[str],
    boundary: Sequence[int],
    depth: int = 10,
    chunk: int = 16,
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
            node = node.children.setdefault(token, _Node((*node.path, token)))
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
        """The next-token log-probabilities after each node's path, in one forward pass."""
        paths = [node.path for node, _ in nodes]
        width = max(len(path) for path in paths)
        ids = torch.zeros((len(paths), width), dtype=torch.long)
        own = torch.zeros_like(ids)
        for row, path in enumerate(paths):  # right padding: a path never attends to it
            ids[row, : len(path)] = torch.tensor(path)
            own[row, : len(path)] = 1
        prompt_mask = torch.ones(len(paths), self.prompt_length, dtype=torch.long)
        mask = torch.cat([prompt_mask, own], dim=1)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(paths))
        positions = torch.arange(self.prompt_length, self.prompt_length + width).expand(
            len(paths), -1
        )
        with torch.no_grad():
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                past_key_values=cache,
                position_ids=positions.to(self.device),
                use_cache=True,
            ).logits.float()
        last = torch.tensor([len(path) - 1 for path in paths], device=logits.device)
        chosen = logits[torch.arange(len(paths), device=logits.device), last]
        return list(chosen.log_softmax(-1).cpu())


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
