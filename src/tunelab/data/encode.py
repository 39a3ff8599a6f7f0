"""Examples -> token ids and labels through the model's own chat template.

Only assistant tokens are learned: every system, user and template token gets label -100;
each assistant reply, including its end-of-turn token, keeps its ids as labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.data.formats import Message

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenised sample: ``labels`` equals ``input_ids`` where learned, -100 elsewhere."""

    input_ids: list[int]
    labels: list[int]
    full_length: int

    @property
    def truncated(self) -> bool:
        """Whether the sample was cut to fit ``max_length``."""
        return self.full_length > len(self.input_ids)

    @property
    def target_tokens(self) -> int:
        """How many tokens carry a loss."""
        return sum(label != IGNORE_INDEX for label in self.labels)


class EncodeError(ValueError):
    """A sample that cannot be encoded (no learnable tokens, template it cannot follow)."""

    def __init__(self, reason: str, full_length: int = 0) -> None:
        super().__init__(reason)
        self.full_length = full_length


def uses_thinking(messages: list[Message]) -> bool:
    """Whether an assistant turn carries a reasoning block the template must keep.

    >>> uses_thinking([{"role": "assistant", "content": "<think>x</think>y"}])
    True
    """
    return any(m["role"] == "assistant" and "</think>" in m["content"] for m in messages)


def render_chat(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool, thinking: bool = False
) -> str:
    """The template's text for a conversation.

    Qwen3-style templates read ``enable_thinking``; when the data has no reasoning we pass
    False, so the generation prompt ends in Qwen's empty think block and no think block is
    ever part of a learned reply. Other templates ignore the flag.
    """
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=thinking,
    )


def encode_prompt(tokenizer: Any, messages: list[Message], thinking: bool = False) -> list[int]:
    """Token ids of a prompt ending where the assistant starts answering."""
    text = render_chat(tokenizer, messages, add_generation_prompt=True, thinking=thinking)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat(tokenizer: Any, messages: list[Message], max_length: int) -> Encoded:
    """Tokenise a whole conversation and mark the assistant replies as the labels.

    Raises:
        EncodeError: when nothing is left to learn after truncation, or the template
            renders replies in a way that cannot be located.
    """
    thinking = uses_thinking(messages)
    text = render_chat(tokenizer, messages, add_generation_prompt=False, thinking=thinking)
    spans = _assistant_spans(tokenizer, messages, text, thinking)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    labels = _labels_in_spans(ids, encoding["offset_mapping"], spans)
    encoded = Encoded(ids[:max_length], labels[:max_length], full_length=len(ids))
    if encoded.target_tokens == 0:
        raise EncodeError(
            f"no assistant tokens left after truncation to max_length={max_length} "
            f"(the sample has {len(ids)} tokens)",
            full_length=len(ids),
        )
    return encoded


def _assistant_spans(
    tokenizer: Any, messages: list[Message], text: str, thinking: bool
) -> list[tuple[int, int]]:
    """Character spans of each assistant reply (with its end-of-turn marker) in ``text``.

    A reply's rendering is what the template adds after the generation prompt; we look for
    it after the previous message's content, so text inside user turns is never taken. The
    template renders the reply with the system messages and the question it answers (not the
    whole history before it, which would make a long conversation quadratic).
    """
    spans = []
    cursor = 0
    system = [m for m in messages if m["role"] == "system"]
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            found = text.find(message["content"].strip(), cursor)
            cursor = found + len(message["content"].strip()) if found >= 0 else cursor
            continue
        window = [*system, *messages[max(index - 1, len(system)) : index]]
        prompt = render_chat(tokenizer, window, add_generation_prompt=True, thinking=thinking)
        turn = render_chat(
            tokenizer, [*window, message], add_generation_prompt=False, thinking=thinking
        )
        if not turn.startswith(prompt):
            raise EncodeError("the chat template renders a reply that does not follow its prompt")
        reply = turn[len(prompt) :].rstrip()
        start = text.find(reply, cursor)
        if start < 0:
            raise EncodeError(f"cannot locate assistant turn {index} in the rendered chat")
        spans.append((start, start + len(reply)))
        cursor = start + len(reply)
    return spans


def _labels_in_spans(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Each token's id where its characters overlap a span (spans in order), else -100."""
    labels, current = [], 0
    for token, (start, end) in zip(ids, offsets, strict=True):
        while current < len(spans) and spans[current][1] <= start:
            current += 1
        inside = current < len(spans) and start < spans[current][1] and end > spans[current][0]
        labels.append(token if inside else IGNORE_INDEX)
    return labels
