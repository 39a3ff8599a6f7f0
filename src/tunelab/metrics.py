"""Pure metric functions: lists of predictions and references in, numbers out."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

_SPACE = re.compile(r"\s+")


def first_line(text: str) -> str:
    """The first non-empty line of a generation, stripped.

    >>> first_line("\\n 正面 \\n because ...")
    '正面'
    """
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def normalize(text: str, lowercase: bool = True, strip_punctuation: bool = False) -> str:
    """Unicode NFKC, collapsed whitespace, optional lower-casing and punctuation removal.

    >>> normalize("  Hello,   World！ ", strip_punctuation=True)
    'hello world'
    """
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        kept = (c for c in text if not unicodedata.category(c).startswith("P"))
        text = _SPACE.sub(" ", "".join(kept)).strip()
    return text


def is_exact(prediction: str, reference: str) -> bool:
    """The prediction equals the reference after ``normalize``.

    >>> is_exact(" Paris", "paris")
    True
    """
    return normalize(prediction) == normalize(reference)


def is_label(prediction: str, reference: str) -> bool:
    """The generation's first line is exactly the reference label.

    >>> is_label("正面\\n理由……", "正面"), is_label("负面。", "负面")
    (True, False)
    """
    return first_line(prediction) == reference.strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after ``normalize``.

    >>> exact_match(["Paris", "rome "], ["paris", "Madrid"])
    0.5
    """
    return _share(is_exact, predictions, references)


def label_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of generations whose first line is exactly the reference label.

    >>> label_accuracy(["正面", "负面。"], ["正面", "负面"])
    0.5
    """
    return _share(is_label, predictions, references)


ROW_METRICS: dict[str, Callable[[str, str], bool]] = {"accuracy": is_label, "exact_match": is_exact}


def _share(
    matches: Callable[[str, str], bool], predictions: Sequence[str], references: Sequence[str]
) -> float:
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    return sum(map(matches, predictions, references)) / len(references)


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
