"""Batched generation: prompts sorted by length, left padding, KV cache, greedy by default.

Answers can be constrained with xgrammar to a label set, a regular expression or a JSON
schema; a constrained answer always parses, so its invalid-output rate is 0.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class AnswerFormat:
    """What a valid answer looks like: one of ``choices``, a ``regex`` match, or JSON."""

    choices: tuple[str, ...] = ()
    regex: str | None = None
    json_schema: str | None = None  # the schema as JSON text, so the format stays hashable
    ebnf: str | None = None  # a grammar whose answers the task's own parser checks

    @property
    def defined(self) -> bool:
        """Whether any format is set."""
        return bool(self.choices or self.regex or self.json_schema or self.ebnf)

    def is_valid(self, answer: str) -> bool:
        """Whether ``answer`` (stripped) parses as this format; anything goes when unset."""
        import re

        text = answer.strip()
        if self.choices:
            return text in self.choices
        if self.regex:
            return re.fullmatch(self.regex, text) is not None
        if self.json_schema:
            return _valid_json(text, json.loads(self.json_schema))
        return True


@dataclass
class GenerationOptions:
    """How to decode: greedy unless a temperature is given."""

    max_new_tokens: int = 64
    batch_size: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    options: GenerationOptions,
    formats: Sequence[AnswerFormat | None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Completions of tokenised prompts, in the order given.

    Prompts of similar length share a batch, so little of each batch is padding. With
    ``formats`` (one per prompt, None for free text), decoding is constrained by xgrammar.
    """
    device = next(model.parameters()).device
    grammars = GrammarCache(tokenizer, model.config.vocab_size) if formats else None
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    if options.seed is not None:
        torch.manual_seed(options.seed)
    for start in range(0, len(order), options.batch_size):
        chosen = order[start : start + options.batch_size]
        ids, mask = _left_padded([prompts[i] for i in chosen], tokenizer.pad_token_id)
        processors = []
        if grammars is not None and formats is not None:
            processors.append(grammars.processor([formats[i] for i in chosen]))
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                logits_processor=processors or None,
                pad_token_id=tokenizer.pad_token_id,
                tokenizer=tokenizer,
                **_decoding_kwargs(options),
            )
        for index, row in zip(chosen, generated[:, ids.shape[1] :], strict=True):
            outputs[index] = _cut_at_stop(
                tokenizer.decode(row, skip_special_tokens=True), options.stop
            )
        if on_batch is not None:
            on_batch(len(chosen))
    return outputs


class GrammarCache:
    """Compiles each distinct answer format once for this tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(info)
        self.compiled: dict[AnswerFormat, Any] = {}

    def processor(self, formats: Sequence[AnswerFormat | None]) -> Any:
        """A fresh logits processor with one grammar per row of the batch."""
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor([self._compile(f or AnswerFormat()) for f in formats])

    def compiled_for(self, answer: AnswerFormat) -> Any:
        """The compiled grammar of ``answer`` (compiled once)."""
        return self._compile(answer)

    def _compile(self, answer: AnswerFormat) -> Any:
        if answer not in self.compiled:
            self.compiled[answer] = self._build(answer)
        return self.compiled[answer]

    def _build(self, answer: AnswerFormat) -> Any:
        if answer.choices:
            alternatives = " | ".join(
                json.dumps(choice, ensure_ascii=False) for choice in answer.choices
            )
            return self.compiler.compile_grammar(f"root ::= {alternatives}")
        if answer.regex:
            return self.compiler.compile_regex(answer.regex)
        if answer.json_schema:
            # compact JSON: with free whitespace a weak model can spend its whole token
            # budget on spaces and never close the object
            return self.compiler.compile_json_schema(answer.json_schema, any_whitespace=False)
        if answer.ebnf:
            return self.compiler.compile_grammar(answer.ebnf)
        return self.compiler.compile_grammar("root ::= [^]*")


def _decoding_kwargs(options: GenerationOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": options.max_new_tokens}
    if options.temperature > 0:
        kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if options.stop:
        kwargs["stop_strings"] = list(options.stop)
    return kwargs


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string (generation stops after it, keeping it).

    >>> _cut_at_stop("答案是 5。\\n问题", ["\\n"])
    '答案是 5。'
    """
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def _valid_json(text: str, schema: dict[str, Any]) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def _left_padded(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    return ids, mask


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


def rank_candidates(
    model: Any,
    tokenizer: Any,
    prompt: list[int],
    candidates: Sequence[str],
    boundary: Sequence[int],
    depth: int = 10,
    chunk: int = 16,
) -> list[tuple[str, float]]:
    """Candidates by log P(candidate, then one of the `boundary` tokens | prompt), best first.

    The boundary (the end of the answer, or a separator after a field) stops a candidate
    that is a prefix of another from scoring as if it were the longer one. The first `depth`
    places are exact: candidates are scored in order of an upper bound (the probability of
    their first token after the prefix all candidates share), and scoring stops once no
    unscored candidate's bound can reach the `depth`-th best score. Places beyond `depth` are
    ordered by that bound.
    """
    device = next(model.parameters()).device
    boundary = list(boundary)
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
