"""Shared fixtures: tiny models built from configs, the embedded model, data-file writers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tiny_models import save_tiny_llama, save_tiny_qwen3


def _native_bf16() -> bool:
    from tunelab.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M, converted to safetensors in the user cache once."""
    from tunelab.config import ModelConfig
    from tunelab.models.resolve import resolve_model

    return resolve_model(ModelConfig())


@pytest.fixture(scope="session")
def smollm_tokenizer(embedded_dir: Path) -> Any:
    from tunelab.models.load import load_tokenizer

    return load_tokenizer(embedded_dir)


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm_tokenizer: Any) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm_tokenizer)


@pytest.fixture(scope="session")
def qwen3_tok(qwen3_dir: Path) -> Any:
    from tunelab.models.load import load_tokenizer

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
    from tunelab.config_file import validate_config
    from tunelab.train.run import train

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
            "eval": {
                "scoring": {"metric": "accuracy"},
                "generation": {"max_new_tokens": 3},
                "max_rows": 8,
            },
        },
        "tiny",
    )
    train(config)
    return root / "runs" / "labels"


@pytest.fixture(scope="session")
def class_run(tmp_path_factory: pytest.TempPathFactory, qwen3_dir: Path) -> Path:
    """A finished class-head run of the tiny Qwen3 on two labels (4 steps)."""
    from tunelab.config_file import validate_config
    from tunelab.train.run import train

    root = tmp_path_factory.mktemp("class-run")
    rows = [
        {
            "text": ("很好 " if i % 2 else "很差 ") * (1 + i % 3),
            "label": "正面" if i % 2 else "负面",
        }
        for i in range(32)
    ]
    data = root / "reviews.jsonl"
    data.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    config = validate_config(
        {
            "task": "classify",
            "name": "reviews",
            "output_dir": str(root / "runs"),
            "model": str(qwen3_dir),
            "data": {"train": str(data), "val_fraction": 0.25},
            "lora": {"r": 4, "alpha": 8},
            "train": {"max_steps": 4, "batch_size": 8, "save_every": 2},
            "eval": {"scoring": {"metric": "accuracy"}},
        },
        "class-run",
    )
    train(config)
    return root / "runs" / "reviews"


FP32_UNIT_ROUNDOFF = 2.0**-24  # half the distance from 1 to the next fp32 number
BF16_UNIT_ROUNDOFF = 2.0**-8
PRECISIONS = [
    "fp32",
    pytest.param(
        "bf16",
        marks=pytest.mark.skipif(
            not _native_bf16(), reason="bf16 on this CPU is emulated; tunelab refuses it"
        ),
    ),
]


def reordering_tolerance(precision: str, terms: int) -> float:
    """How far apart (normwise, relative) two runs may end that add the same ``terms``
    per-token gradient terms in another order (other rows, passes or processes).

    Reordering a sum of n fp32 terms moves it by at most (n - 1) u times the sum of their
    magnitudes (u: the unit roundoff). In bf16 the frozen matmuls also round each product
    once to bf16 (sums stay fp32): where two runs' values straddle a rounding boundary they
    part by one bf16 unit, in a few elements, normwise far less than one bf16 unit roundoff.
    """
    return terms * FP32_UNIT_ROUNDOFF + (BF16_UNIT_ROUNDOFF if precision == "bf16" else 0.0)


def lora_deltas(adapter: Path) -> dict[str, Any]:
    """Per adapted layer, the weight change the adapter adds (B @ A; the scale is common)."""
    from safetensors.torch import load_file

    weights = load_file(adapter / "adapter_model.safetensors")
    return {
        key.replace(".lora_A.weight", ""): weights[key.replace("lora_A", "lora_B")] @ value
        for key, value in weights.items()
        if key.endswith("lora_A.weight")
    }


def relative_distance(a: Any, b: Any) -> float:
    """Normwise: ||a - b|| / ||a||."""
    return ((a - b).norm() / a.norm()).item()


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
