"""The fine-tuned model as a next-event predictor: constrained answers and ranked candidates.

The answer grammar comes from the training vocabulary: an action, then one of the targets
seen with that action, then optional details (one of those seen when they are few), then the
delay when times are predicted. Candidate targets are ranked by the model's probability of
`action | target` followed by a field boundary, scored from one shared prompt cache.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tunelab.data.encode import encode_prompt
from tunelab.data.formats import alpaca_prompt
from tunelab.generate import AnswerFormat, GenerationOptions, generate_texts
from tunelab.tasks.behavior.events import FIELD_SEPARATOR

CLOSED_SET_LIMIT = 2000
CLOSED_DETAILS_LIMIT = 300


def event_grammar(vocabulary: dict[str, Any], predict_time: bool) -> str:
    """An EBNF grammar (xgrammar) for one event answer, derived from the training vocabulary."""
    rules = []
    alternatives = []
    for index, (action, targets) in enumerate(sorted(vocabulary["actions"].items())):
        name = f"target{index}"
        alternatives.append(f"{_literal(action + FIELD_SEPARATOR)} {name}")
        if len(targets) <= CLOSED_SET_LIMIT:
            rules.append(f"{name} ::= " + " | ".join(_literal(t) for t in targets))
        else:
            rules.append(f"{name} ::= [^|\\n] [^|\\n]*")
    known = [d for d in vocabulary["details"] if d]
    if known and len(known) <= CLOSED_DETAILS_LIMIT:
        rules.append("details ::= " + " | ".join(_literal(d) for d in known))
    else:
        rules.append("details ::= [^|@\\n] [^|@\\n]*")
    delay = ' " @ +" [0-9] [0-9]? [0-9]? [0-9]? [0-9]? "m"' if predict_time else ""
    root = f"root ::= ({' | '.join(alternatives)}) ({_literal(FIELD_SEPARATOR)} details)?{delay}"
    return "\n".join([root, *rules])


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def prompt_ids(tokenizer: Any, rows: Sequence[dict[str, Any]]) -> list[list[int]]:
    """The prompts exactly as training encoded them."""
    return [encode_prompt(tokenizer, alpaca_prompt(row)) for row in rows]


def predict_events(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    grammar: str | None,
    batch_size: int = 16,
    max_new_tokens: int = 48,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers, constrained to the grammar when one is given."""
    formats = [AnswerFormat(ebnf=grammar)] * len(prompts) if grammar else None
    options = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size)
    return generate_texts(model, tokenizer, prompts, options, formats, on_batch)


def rank_candidates(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    candidates: Sequence[str],
    depth: int = 10,
    chunk: int = 16,
) -> list[tuple[str, float]]:
    """Candidate keys by log P(key, then a field boundary | prompt), best first.

    The boundary (the separator before details, or the end of the answer) stops a target
    that is a prefix of another from scoring as if it were the longer one. The first `depth`
    places are exact: candidates are scored in order of an upper bound (the probability of
    their first token after the prefix all candidates share), and scoring stops once no
    unscored candidate's bound can reach the `depth`-th best score. Places beyond `depth` are
    ordered by that bound.
    """
    device = next(model.parameters()).device
    boundary = _boundary_tokens(tokenizer)
    tokens = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in candidates]
    shared = _common_prefix(tokens)
    context = prompt + shared
    with torch.no_grad():
        out = model(input_ids=torch.tensor([context], device=device), use_cache=True)
    logprobs = out.logits[0].float().log_softmax(-1)
    positions = torch.arange(len(prompt) - 1, len(context) - 1)
    prefix_score = float(logprobs[positions, torch.tensor(shared, dtype=torch.long)].sum())
    after = logprobs[-1]
    rests = [t[len(shared) :] for t in tokens]
    bounds = [
        prefix_score + float(after[rest[0]] if rest else torch.logsumexp(after[boundary], 0))
        for rest in rests
    ]
    order = sorted(range(len(candidates)), key=lambda i: -bounds[i])
    scored: dict[int, float] = {}
    for start in range(0, len(order), chunk):
        if len(scored) >= depth and bounds[order[start]] < sorted(scored.values())[-depth]:
            break
        group = order[start : start + chunk]
        for index in [i for i in group if not rests[i]]:
            scored[index] = bounds[index]
        full = [i for i in group if rests[i]]
        if full:
            values = _group_scores(
                model, out.past_key_values, len(context), after, [rests[i] for i in full], boundary
            )
            scored.update({i: prefix_score + v for i, v in zip(full, values, strict=True)})
    exact = sorted(scored, key=lambda i: -scored[i])
    rest_order = [i for i in order if i not in scored]
    return [(candidates[i], scored[i]) for i in exact] + [
        (candidates[i], bounds[i]) for i in rest_order
    ]


def _common_prefix(rows: Sequence[list[int]]) -> list[int]:
    """The tokens every row starts with (at most all but the last of the shortest row)."""
    if not rows:
        return []
    shortest = min(len(r) for r in rows)
    length = 0
    while length < shortest - 1 and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return list(rows[0][:length])


def _boundary_tokens(tokenizer: Any) -> list[int]:
    separator = tokenizer(FIELD_SEPARATOR.rstrip(), add_special_tokens=False)["input_ids"][:1]
    return sorted({*separator, tokenizer.eos_token_id})


def _group_scores(
    model: Any,
    cache: Any,
    prompt_length: int,
    first: torch.Tensor,
    group: list[list[int]],
    boundary: list[int],
) -> list[float]:
    device = first.device
    width = max(len(ids) for ids in group)
    # right padding: a candidate's own positions never attend to the padding after it
    ids = torch.zeros((len(group), width), dtype=torch.long)
    own = torch.zeros_like(ids)
    for row, tokens in enumerate(group):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        own[row, : len(tokens)] = 1
    mask = torch.cat([torch.ones(len(group), prompt_length, dtype=torch.long), own], dim=1)
    shared = copy.deepcopy(cache)
    shared.batch_repeat_interleave(len(group))
    positions = torch.arange(prompt_length, prompt_length + width).expand(len(group), -1)
    with torch.no_grad():
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            past_key_values=shared,
            position_ids=positions.to(device),
            use_cache=True,
        ).logits.float()
    logprobs = logits.log_softmax(-1).cpu()
    scores = []
    for row, tokens in enumerate(group):
        total = float(first[tokens[0]])
        for step in range(1, len(tokens)):
            total += float(logprobs[row, step - 1, tokens[step]])
        end = logprobs[row, len(tokens) - 1, boundary]
        scores.append(total + float(torch.logsumexp(end, dim=0)))
    return scores
