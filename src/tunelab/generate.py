"""Batched generation: prompts sorted by length, left padding, KV cache, greedy by default.

Answers can be constrained with xgrammar to a label set, a regular expression or a JSON
schema; a constrained answer always parses, so its invalid-output rate is 0.
"""

from __future__ import annotations

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
            # an answer cut at max_new_tokens may end inside a character
            text = tokenizer.decode(row, skip_special_tokens=True).rstrip("\ufffd")
            outputs[index] = _cut_at_stop(text, options.stop)
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
