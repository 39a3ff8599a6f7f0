"""Raw rows -> Examples: one small converter per format, and format detection.

Every format converts into the same record, a chat: a list of ``{"role", "content"}``
messages that ends with the assistant. A row that cannot be converted becomes a
``RowError`` naming the field and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tunelab.data.readers import RawRow, Source

Message = dict[str, str]


@dataclass
class Example:
    """One training conversation, with its provenance and any extra columns (task, id ...)."""

    messages: list[Message]
    source: Source
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> list[Message]:
        """Every message before the final assistant answer."""
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        """The final assistant answer (the reference for evaluation)."""
        return self.messages[-1]["content"]


class RowError(ValueError):
    """A row that does not fit its format: which field, and what was expected."""

    def __init__(self, field_name: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def is_messages(row: dict[str, Any]) -> bool:
    """OpenAI chat format.

    >>> is_messages({"messages": [{"role": "user", "content": "hi"}]})
    True
    """
    return "messages" in row


def is_sharegpt(row: dict[str, Any]) -> bool:
    """ShareGPT format.

    >>> is_sharegpt({"conversations": [{"from": "human", "value": "hi"}]})
    True
    """
    return "conversations" in row


def is_alpaca(row: dict[str, Any]) -> bool:
    """Alpaca format (``input``, ``system`` and ``history`` are optional).

    >>> is_alpaca({"instruction": "Add 2 and 3", "output": "5"})
    True
    >>> is_alpaca({"text": "hello"})
    False
    """
    return "instruction" in row and "output" in row


def from_alpaca(row: dict[str, Any]) -> list[Message]:
    """instruction (+ input) -> user, output -> assistant; history pairs come first."""
    return [
        *alpaca_prompt(row),
        {"role": "assistant", "content": _text(row, "output", answer=True)},
    ]


def alpaca_prompt(row: dict[str, Any]) -> list[Message]:
    """The messages of an Alpaca row up to the question (no output needed)."""
    instruction = _text(row, "instruction")
    extra_input = _optional_text(row, "input")
    messages: list[Message] = []
    system = _optional_text(row, "system")
    if system:
        messages.append({"role": "system", "content": system})
    history = _parse_json_cell(row.get("history")) or []
    if not isinstance(history, list | tuple):
        raise RowError("history", "expected a list of [question, answer] pairs")
    for index, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError(f"history[{index}]", "expected a [question, answer] pair")
        question, reply = (str(part) for part in pair)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    prompt = f"{instruction}\n{extra_input}" if extra_input else instruction
    messages.append({"role": "user", "content": prompt})
    return messages


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def from_sharegpt(row: dict[str, Any]) -> list[Message]:
    """conversations of {from, value}: human/gpt/system (user/assistant accepted too)."""
    turns = _turn_list(row, "conversations")
    messages = []
    for index, turn in enumerate(turns):
        where = f"conversations[{index}]"
        if not isinstance(turn, dict):
            raise RowError(where, "expected an object with 'from' and 'value'")
        speaker = turn.get("from")
        if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:
            expected = "human, gpt, system"
            raise RowError(f"{where}.from", f"unknown role {speaker!r}; expected {expected}")
        if not isinstance(turn.get("value"), str):
            raise RowError(f"{where}.value", "missing or not text")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn["value"]})
    return _checked_chat(messages, "conversations")


CHAT_ROLES = ("system", "user", "assistant")


def from_messages(row: dict[str, Any]) -> list[Message]:
    """messages of {role, content}; content may be OpenAI text parts."""
    turns = _turn_list(row, "messages")
    messages = []
    for index, turn in enumerate(turns):
        where = f"messages[{index}]"
        if not isinstance(turn, dict):
            raise RowError(where, "expected an object with 'role' and 'content'")
        role = turn.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise RowError(
                f"{where}.role", f"unknown role {role!r}; expected {', '.join(CHAT_ROLES)}"
            )
        messages.append({"role": role, "content": _content_text(turn.get("content"), where)})
    return _checked_chat(messages, "messages")


FORMATS: dict[
    str, tuple[Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], list[Message]]]
] = {
    "messages": (is_messages, from_messages),
    "sharegpt": (is_sharegpt, from_sharegpt),
    "alpaca": (is_alpaca, from_alpaca),
}

FORMAT_FIELDS = {
    "messages": "messages",
    "sharegpt": "conversations",
    "alpaca": "instruction, output (input, system, history optional)",
}


def detect_format(rows: Iterable[RawRow], sample: int = 50) -> str | None:
    """The format most of the first rows match, or None when no format matches.

    >>> detect_format([RawRow({"instruction": "a", "output": "b"}, Source("f"))])
    'alpaca'
    """
    votes: dict[str, int] = {}
    for index, row in enumerate(rows):
        if index >= sample:
            break
        for name, (matches, _) in FORMATS.items():
            if matches(row.data):
                votes[name] = votes.get(name, 0) + 1
                break
    return max(votes, key=lambda name: votes[name]) if votes else None


FORMAT_KEYS = {"messages", "conversations", "instruction", "input", "output", "system", "history"}


def convert_row(row: RawRow, format_name: str) -> Example:
    """Apply one format's converter; raises RowError for a row that does not fit."""
    _, converter = FORMATS[format_name]
    messages = converter(row.data)
    for index, message in enumerate(messages):
        _check_unicode(message["content"], f"message {index + 1}")
    extra = {k: v for k, v in row.data.items() if k not in FORMAT_KEYS}
    return Example(messages=messages, source=row.source, extra=extra)


def _checked_chat(messages: list[Message], key: str) -> list[Message]:
    if not messages:
        raise RowError(key, "empty conversation")
    for index, message in enumerate(messages):
        if message["role"] == "system" and index > 0:
            raise RowError(f"{key}[{index}]", "a system message may only come first")
    if messages[-1]["role"] != "assistant":
        raise RowError(key, "the conversation must end with an assistant turn")
    spoken = [m for m in messages if m["role"] != "system"]
    for index, message in enumerate(spoken):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RowError(
                key, f"turns must alternate user/assistant; turn {index + 1} is {message['role']}"
            )
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and not message["content"].strip():
            raise RowError(f"{key}[{index}]", "empty assistant reply")
    return messages


def _check_unicode(text: str, where: str) -> None:
    """JSON can spell a lone surrogate (\\ud800) that no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise RowError(
            where, f"not valid Unicode text (a lone surrogate U+{ord(bad):04X})"
        ) from None


def _turn_list(row: dict[str, Any], key: str) -> list[Any]:
    turns = _parse_json_cell(row.get(key))
    if not isinstance(turns, list):
        raise RowError(key, "expected a list of turns")
    return turns


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    raise RowError(f"{where}.content", "expected text (or a list of text parts)")


def _parse_json_cell(value: Any) -> Any:
    """Tables store lists as JSON text in a cell; decode that, leave anything else alone."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _text(row: dict[str, Any], key: str, answer: bool = False) -> str:
    if key not in row:
        raise RowError(key, "missing")
    value = row[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowError(key, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise RowError(key, "empty assistant reply" if answer else "empty")
    return value


def _optional_text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value)


PROMPT_FORMATS = {
    "messages": is_messages,
    "sharegpt": is_sharegpt,
    "alpaca": lambda row: "instruction" in row,
}


def detect_prompt_format(rows: Iterable[RawRow], sample: int = 50) -> str | None:
    """The format of rows to predict for: answers are optional here.

    >>> detect_prompt_format([RawRow({"instruction": "2+2?"}, Source("f"))])
    'alpaca'
    """
    votes: dict[str, int] = {}
    for index, row in enumerate(rows):
        if index >= sample:
            break
        name = next((n for n, matches in PROMPT_FORMATS.items() if matches(row.data)), None)
        if name:
            votes[name] = votes.get(name, 0) + 1
    return max(votes, key=lambda name: votes[name]) if votes else None


def prompt_of(row: dict[str, Any], format_name: str) -> list[Message]:
    """The prompt of a row for prediction: the chat up to the last user turn.

    >>> prompt_of({"instruction": "2+2?"}, "alpaca")
    [{'role': 'user', 'content': '2+2?'}]
    """
    if format_name == "alpaca":
        return alpaca_prompt(row)
    key = "messages" if format_name == "messages" else "conversations"
    turns = _turn_list(row, key)
    if turns and _speaker(turns[-1]) == "assistant":
        turns = turns[:-1]
    placeholder = (
        {"role": "assistant", "content": "-"}
        if key == "messages"
        else {"from": "gpt", "value": "-"}
    )
    _, converter = FORMATS[format_name]
    return converter({key: [*turns, placeholder]})[:-1]


def _speaker(turn: Any) -> str | None:
    if not isinstance(turn, dict):
        return None
    speaker = turn.get("from") if "from" in turn else turn.get("role")
    if not isinstance(speaker, str):
        return None
    return SHAREGPT_ROLES.get(speaker) if "from" in turn else speaker
