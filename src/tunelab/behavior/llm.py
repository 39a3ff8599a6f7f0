"""The fine-tuned model as a next-event predictor: constrained answers and ranked candidates.

The answer grammar comes from the training vocabulary: an action, then one of the targets
seen with that action, then optional details (one of those seen when they are few), then the
delay when times are predicted. Candidate targets are ranked (`ranking.rank_candidates`) by
the model's probability of `action | target` followed by a field boundary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from tunelab.behavior.events import FIELD_SEPARATOR
from tunelab.data.encode import encode_prompt
from tunelab.data.formats import alpaca_prompt
from tunelab.generate import AnswerFormat, GenerationOptions, generate_texts

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


def boundary_tokens(tokenizer: Any) -> list[int]:
    """What may follow `action | target` in an answer: the separator before details, or the end."""
    separator = tokenizer(FIELD_SEPARATOR.rstrip(), add_special_tokens=False)["input_ids"][:1]
    return sorted({*separator, tokenizer.eos_token_id})
