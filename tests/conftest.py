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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, qwen3_dir: Path) -> Path:
    """A finished run of the tiny Qwen3 on a two-label task (4 steps)."""
    from tunelab.config import validate_config
    from tunelab.train import train

    root = tmp_path_factory.mktemp("tiny-run")
    data = root / "labels.jsonl"
    rows = [
        {"instruction": f"评论 {i}：好还是坏？", "output": "好" if i % 2 else "坏", "id": i}
        for i in range(40)
    ]
    data.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    config = validate_config(
        {
            "name": "labels",
            "output_dir": str(root / "runs"),
            "model": str(qwen3_dir),
            "data": {"train": str(data), "max_length": 64, "val_fraction": 0.2},
            "lora": {"r": 4, "alpha": 8},
            "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "save_every": 2},
            "eval": {"metric": "accuracy", "max_new_tokens": 3, "max_rows": 8},
        },
        "tiny",
    )
    train(config)
    return root / "runs" / "labels"


def alpaca_rows(count: int, answer: str = "好") -> list[dict[str, str]]:
    """Small valid Alpaca rows."""
    return [
        {"instruction": f"问题 {i}：说一个字", "output": f"{answer}{i % 3}"} for i in range(count)
    ]


@pytest.fixture
def sdpa_masks(monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[Any]]:
    """Call it to start recording the mask of every SDPA call (None where a causal call had
    none); returns the list it records into."""
    import torch

    def start() -> list[Any]:
        calls: list[Any] = []
        original = torch.nn.functional.scaled_dot_product_attention

        def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
            causal = kwargs.get("is_causal", False)
            calls.append(kwargs.get("attn_mask", None if causal else "neither mask nor causal"))
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
        return calls

    return start
