"""The GPU-only paths, marked `gpu`: skipped on a CPU with the reason, run whenever CUDA is
there (`pytest -m gpu`). bench/gpu_check.py measures the same paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import alpaca_rows
from tunelab.config_file import validate_config
from tunelab.train.run import train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ROOT = Path(__file__).parent.parent


def gpu_config(model: Path, data: Path, out: Path, name: str, **train_settings: object) -> dict:
    return {
        "name": name,
        "output_dir": str(out),
        "model": str(model),
        "data": {"train": str(data), "max_length": 64, "val_fraction": 0.1},
        "lora": {"r": 4, "alpha": 8},
        "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-2, "save_every": 3,
                  **train_settings},
        "eval": {"generate": False},
    }  # fmt: skip


def test_the_gpu_check_says_clearly_when_there_is_no_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2 and "no CUDA device" in done.stderr


@pytest.mark.gpu
@CUDA
def test_fp16_trains_with_loss_scaling_to_a_finite_loss(qwen3_dir, write_jsonl, tmp_path) -> None:
    data = write_jsonl(alpaca_rows(40))
    result = train(
        validate_config(gpu_config(qwen3_dir, data, tmp_path, "fp16", precision="fp16"), "t")
    )
    assert result.train_loss is not None and torch.isfinite(torch.tensor(result.train_loss))
    record = json.loads((tmp_path / "fp16" / "run.json").read_text())["precision"]
    assert record == {"requested": "fp16", "resolved": "fp16", "device": "cuda"}


@pytest.mark.gpu
@CUDA
def test_nf4_loads_and_its_adapter_moves(qwen3_dir, write_jsonl, tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file

    data = write_jsonl(alpaca_rows(40))
    raw = gpu_config(qwen3_dir, data, tmp_path, "nf4", precision="bf16")
    raw["model"] = {"name": str(qwen3_dir), "quantization": "4bit"}
    train(validate_config(raw, "t"))
    weights = load_file(tmp_path / "nf4" / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())


@pytest.mark.gpu
@CUDA
def test_packed_rows_equal_unpacked_on_cuda(qwen3_dir, write_jsonl, tmp_path) -> None:
    data = write_jsonl(alpaca_rows(40))
    losses = {}
    for packing in (True, False):
        raw = gpu_config(qwen3_dir, data, tmp_path, f"p{packing}", precision="fp32")
        raw["data"]["packing"] = packing
        train(validate_config(raw, "t"))
        lines = (tmp_path / f"p{packing}" / "metrics.jsonl").read_text().splitlines()
        losses[packing] = [json.loads(line)["loss"] for line in lines if '"loss"' in line]
    # fp32 sums in another order: 64 terms of rounding 2^-24 each, relative to the loss
    assert losses[True] == pytest.approx(losses[False], rel=64 * 2.0**-24 * 8)


@pytest.mark.gpu
@CUDA
def test_resume_is_bit_exact_on_cuda(qwen3_dir, write_jsonl, tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file

    data = write_jsonl(alpaca_rows(40))
    whole = gpu_config(qwen3_dir, data, tmp_path, "whole", precision="fp32")
    train(validate_config(whole, "t"))
    part = gpu_config(qwen3_dir, data, tmp_path, "part", precision="fp32")
    train(validate_config(part, "t"))
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step-000006")
    train(validate_config(part, "t"), resume=True)
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "part" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.gpu
@CUDA
def test_a_run_opens_and_generates_on_cuda(tiny_run) -> None:
    from tunelab.use.open import open_run

    opened = open_run(tiny_run)
    assert next(opened.model.parameters()).is_cuda
    assert isinstance(
        opened.generate([[{"role": "user", "content": "评论 1：好还是坏？"}]])[0], str
    )
