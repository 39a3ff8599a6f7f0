"""Checkpoints that resume bit-exactly: adapter, optimizer, scheduler and RNG state.

Each process of a data-parallel run draws its own dropout masks, so the RNG state of
every process is kept, in rank order; a process resumes from its own.

Everything is written as safetensors (tensors) and JSON (the rest), into a temporary
directory that is renamed into place, so a checkpoint is either whole or absent.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunelab.run_dir import RunDir, atomic_directory

MANIFEST = "manifest.json"


@dataclass
class TrainingState:
    """What the loop needs, beyond weights, to continue exactly where it stopped."""

    step: int
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]]  # ``capture_rng()`` of each process, in rank order
    best: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None  # train.budget's plan and spending (BudgetPlan)


def capture_rng() -> dict[str, Any]:
    """Every random generator the training step may draw from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put the generators back as ``capture_rng`` found them."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run: RunDir, model: Any, optimizer: torch.optim.Optimizer, state: TrainingState, keep: int
) -> Path:
    """Write the checkpoint of ``state.step`` atomically; keep only the newest ``keep``."""
    final = run.checkpoint(state.step)
    with atomic_directory(final) as staging:
        model.save_pretrained(staging / "adapter")
        _save_optimizer(optimizer, staging)
        _save_state(state, staging)
        write_manifest(staging)
    for old in run.list_checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_manifest(folder: Path) -> None:
    """manifest.json, written last: every other file's size and SHA-256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _digest(p)} for p in files
    }
    (folder / MANIFEST).write_text(json.dumps({"files": entries}, indent=1), encoding="utf-8")


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (a file missing, cut short or changed), or None.

    A checkpoint without a manifest (from a release before manifests) is not checked here;
    loading it is the check.
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None if (folder / "trainer_state.json").is_file() else "it is incomplete"
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"its {MANIFEST} is unreadable"
    for name, expected in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} expected"
        if _digest(path) != expected["sha256"]:
            return f"{name} does not match its digest (changed after it was saved)"
    return None


def adapter_is_finite(model: Any) -> bool:
    """Whether every trainable weight is a finite number."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def load_checkpoint(path: Path, model: Any, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Load adapter weights and optimizer state in place; return the loop state."""
    from peft import set_peft_model_state_dict

    weights = load_file(path / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(model, weights)
    _load_optimizer(optimizer, path)
    return _load_state(path)


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    saved = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in saved["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    save_file(tensors, folder / "optimizer.safetensors")
    meta = {"param_groups": saved["param_groups"], "scalars": scalars}
    (folder / "optimizer.json").write_text(json.dumps(meta), encoding="utf-8")


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
    state: dict[int, dict[str, Any]] = {}
    flat = {**load_file(folder / "optimizer.safetensors"), **meta["scalars"]}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_state(state: TrainingState, folder: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    generators = []
    for rank, rng in enumerate(state.rng):
        prefix = "" if rank == 0 else f"rank{rank}."
        tensors[f"{prefix}torch"] = rng["torch"]
        for device, cuda_state in enumerate(rng.get("cuda", [])):
            tensors[f"{prefix}cuda.{device}"] = cuda_state
        generators.append(_host_generators(rng))
    save_file(tensors, folder / "rng.safetensors")
    record = {
        "step": state.step,
        "scheduler": state.scheduler,
        "best": state.best,
        "budget": state.budget,
        **generators[0],
        "other_ranks": generators[1:],
    }
    (folder / "trainer_state.json").write_text(json.dumps(record, indent=1), encoding="utf-8")


def _host_generators(rng: dict[str, Any]) -> dict[str, Any]:
    version, internal, gauss = rng["python"]
    kind, keys, position, has_gauss, cached = rng["numpy"]
    return {
        "python_rng": [version, list(internal), gauss],
        "numpy_rng": [kind, keys.tolist(), position, has_gauss, cached],
    }


def _load_state(folder: Path) -> TrainingState:
    record = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    tensors = load_file(folder / "rng.safetensors")
    # checkpoints written before per-rank states hold rank 0's alone
    generators = [record, *record.get("other_ranks", [])]
    rng = [_rank_rng(tensors, rank, saved) for rank, saved in enumerate(generators)]
    return TrainingState(
        record["step"], record["scheduler"], rng, record.get("best"), record.get("budget")
    )


def _rank_rng(tensors: dict[str, torch.Tensor], rank: int, saved: dict[str, Any]) -> dict:
    prefix = "" if rank == 0 else f"rank{rank}."
    version, internal, gauss = saved["python_rng"]
    kind, keys, position, has_gauss, cached = saved["numpy_rng"]
    rng: dict[str, Any] = {
        "torch": tensors[f"{prefix}torch"],
        "python": (version, tuple(internal), gauss),
        "numpy": (kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached),
    }
    cuda_keys = sorted(
        (k for k in tensors if k.startswith(f"{prefix}cuda.")), key=lambda k: int(k.split(".")[-1])
    )
    if cuda_keys:
        rng["cuda"] = [tensors[k] for k in cuda_keys]
    return rng


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
