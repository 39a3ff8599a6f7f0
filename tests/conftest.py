"""Shared fixtures: tiny models built from configs, the embedded model, data-file writers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tiny_models import save_tiny_llama, save_tiny_qwen3


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M, converted to safetensors in the user cache once."""
    from tunelab.config import ModelConfig
    from tunelab.models import resolve_model

    return resolve_model(ModelConfig())


@pytest.fixture(scope="session")
def smollm_tokenizer(embedded_dir: Path) -> Any:
    from tunelab.models import load_tokenizer

    return load_tokenizer(embedded_dir)


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm_tokenizer: Any) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm_tokenizer)


@pytest.fixture(scope="session")
def qwen3_tok(qwen3_dir: Path) -> Any:
    from tunelab.models import load_tokenizer

    return load_tokenizer(qwen3_dir)


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write rows (dicts, or raw strings for broken lines) as a .jsonl file."""

    def write(rows: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        lines = [
            row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


def alpaca_rows(count: int, answer: str = "好") -> list[dict[str, str]]:
    """Small valid Alpaca rows."""
    return [
        {"instruction": f"问题 {i}：说一个字", "output": f"{answer}{i % 3}"} for i in range(count)
    ]
