"""One line of advice when a run ends below its classic baseline, from what the run saw."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tunelab.scoring import EvalResult

FEW_ROWS = 2000  # below this, more labelled rows is the cheapest gain for a label task
STILL_FALLING = 0.05  # the loss fell by more than this share over the last quarter of steps
HAN = re.compile(r"[\u3400-\u9fff]")
# measured with ten minutes of training (examples/classify/RESULTS.md): +2.5 to +3.3 points
# on Chinese reviews; no gain established on English food reviews, and on tweets by device,
# whose label is not in the words, it cost 1.5, hence "the question its label answers"
FRAME_HINT = (
    "each text framed as the question its label answers, in words the model knows "
    "(data.text_template; +2.5 to +3.3 points on Chinese reviews)"
)


def below_baseline_advice(
    tuned: EvalResult,
    classic: EvalResult | None,
    losses: list[float],
    train_rows: int,
    tokenizer: Any,
    mode: str = "max",
    answers: Sequence[str] = (),
    unframed_head: bool = False,
) -> str | None:
    """Why a run that ended below its baseline did, and what most likely helps; None when it
    did not end below. ``answers``: the words a generative run answers with (its
    eval.scoring.choices); ``unframed_head``: a class head that read its texts bare (no
    data.text_template)."""
    if classic is None or tuned.metric != classic.metric:
        return None
    gap = tuned.score - classic.score if mode == "max" else classic.score - tuned.score
    if gap >= 0:
        return None
    hints = [
        hint
        for hint in (
            _loss_hint(losses),
            _language_hint(tuned.rows, tokenizer),
            _answers_hint(answers, tokenizer),
            FRAME_HINT if unframed_head else None,
            _rows_hint(train_rows),
        )
        if hint
    ]
    if not hints:
        hints = ["a larger base model, or a class head (task: classify) for a label task"]
    return (
        f"below the classic baseline by {-gap:.4f} {tuned.metric}; most likely to help: "
        + "; ".join(hints)
    )


def loss_still_falling(losses: list[float]) -> bool:
    """Whether the mean loss of the last eighth of steps is clearly below that of the eighth
    before it (a quarter of the run): training stopped before the model stopped learning."""
    if len(losses) < 16:
        return False
    eighth = len(losses) // 8
    last, before = losses[-eighth:], losses[-2 * eighth : -eighth]
    earlier = sum(before) / len(before)
    return earlier > 0 and (earlier - sum(last) / len(last)) / earlier > STILL_FALLING


def _loss_hint(losses: list[float]) -> str | None:
    if loss_still_falling(losses):
        return "more training (the loss was still falling at the end: a larger --budget)"
    return None


def _rows_hint(train_rows: int) -> str | None:
    if train_rows < FEW_ROWS:
        return f"more labelled rows (it trained on {train_rows:,})"
    return None


def tokens_per_han_character(rows: list[dict[str, Any]], tokenizer: Any) -> float | None:
    """Tokens the tokenizer spends per Chinese character of the rows' inputs, when they are
    mostly Chinese; None otherwise or without a tokenizer."""
    return _han_ratio([str(row.get("input", "")) for row in rows[:100]], tokenizer)


def _han_ratio(texts: Sequence[str], tokenizer: Any) -> float | None:
    han = sum(len(HAN.findall(text)) for text in texts)
    if tokenizer is None or han == 0 or han < 0.3 * sum(len(text) for text in texts):
        return None
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)
    return tokens / han


def _language_hint(rows: list[dict[str, Any]], tokenizer: Any) -> str | None:
    ratio = tokens_per_han_character(rows, tokenizer)
    # a tokenizer trained on Chinese spends under one token per character (Qwen3: ~0.8 on
    # reviews, SmolLM2: ~2.1)
    if ratio is not None and ratio >= 1.0:
        return (
            f"a base model trained on Chinese, such as Qwen3-0.6B (this one's tokenizer spends "
            f"{ratio:.1f} tokens per Chinese character, a sign it has seen little Chinese)"
        )
    return None


def _answers_hint(answers: Sequence[str], tokenizer: Any) -> str | None:
    # on Chinese reviews with ten minutes of training, answering positive / negative scored
    # 0.7793 against 0.6183 for 正面 / 负面 (examples/classify/RESULTS.md): the model knows
    # the English words, and the Chinese ones are byte pieces it has no meaning for
    ratio = _han_ratio(answers, tokenizer)
    if ratio is not None and ratio >= 1.0:
        return (
            f"answers in words this model knows ({' / '.join(answers)} cost {ratio:.1f} tokens "
            "per character: on Chinese reviews, positive / negative instead of 正面 / 负面 "
            "scored 16 points higher)"
        )
    return None
