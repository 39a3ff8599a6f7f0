"""RunDir owns the layout of a run; atomic_directory never leaves a half-written folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.run_dir import RunDir, atomic_directory


def adapter_at(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_the_adapter_of_each_checkpoint_name(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    final = adapter_at(tmp_path / "adapter")
    best = adapter_at(tmp_path / "best")
    step = adapter_at(tmp_path / "checkpoints" / "step-000012" / "adapter")
    assert run.checkpoint(12) == step.parent
    assert [run.adapter_of(None), run.adapter_of("final")] == [final, final]
    assert run.adapter_of("best") == best and run.adapter_of("12") == step
    assert run.list_checkpoints() == [step.parent]
    with pytest.raises(TunelabError, match="no adapter there"):
        run.adapter_of("7")
    with pytest.raises(TunelabError, match="expected final, best or a step number"):
        run.adapter_of("../../elsewhere")


def test_labels_round_trip_in_id_order(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_labels(["正面", "负面", "10", "2"])
    assert run.read_labels() == ["正面", "负面", "10", "2"]
    assert run.read_record() == {}  # a run from before run.json


def test_an_atomic_directory_replaces_the_old_one_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no staging or old copy left
