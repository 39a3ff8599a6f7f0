"""Faults around a run: corrupt checkpoints, kills during a save, divergence, a full disk, a
run killed before its first step. Resume takes the newest intact state; nothing non-finite,
half-written or outside the run is ever left behind."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import alpaca_rows
from tunelab.config_file import validate_config
from tunelab.train.checkpoint import checkpoint_problem
from tunelab.train.run import train


def tunelab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, timeout=600
    )


def config_of(model: Path, data: Path, out: Path, name: str = "run", **train: object) -> dict:
    return {
        "name": name,
        "output_dir": str(out),
        "model": str(model),
        "data": {"train": str(data), "max_length": 64, "val_fraction": 0.1},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "train": {
            "batch_size": 4,
            "learning_rate": 1e-2,
            "max_steps": 6,
            "save_every": 2,
            "keep_checkpoints": 3,
            **train,
        },
        "eval": {"generate": False},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, qwen3_dir: Path) -> Path:
    """A 6-step run with checkpoints at steps 2, 4 and 6."""
    root = tmp_path_factory.mktemp("finished")
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in alpaca_rows(40)) + "\n", encoding="utf-8")
    train(validate_config(config_of(qwen3_dir, data, root / "runs"), "t"))
    return root / "runs" / "run"


def damage_file(name: str, how: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(checkpoint: Path) -> None:
        path = checkpoint / name
        path.write_bytes(how(path.read_bytes()))

    return damage


def header_end(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def nan_weights(data: bytes) -> bytes:
    start = header_end(data)
    nan = struct.pack("<f", float("nan"))
    return data[:start] + nan * ((len(data) - start) // 4)


def flipped(data: bytes) -> bytes:
    middle = (header_end(data) + len(data)) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]


ADAPTER = "adapter/adapter_model.safetensors"
DAMAGE = {
    "truncated safetensors": damage_file(ADAPTER, lambda d: d[: len(d) // 2]),
    "empty safetensors": damage_file(ADAPTER, lambda d: b""),
    "garbage header": damage_file(ADAPTER, lambda d: b"\xff" * 16 + d[16:]),
    "garbage trainer_state": damage_file("trainer_state.json", lambda d: b"{not json"),
    "truncated trainer_state": damage_file("trainer_state.json", lambda d: d[: len(d) // 3]),
    "garbage optimizer json": damage_file("optimizer.json", lambda d: b"\x00\x01garbage"),
    "truncated optimizer json": damage_file("optimizer.json", lambda d: d[:10]),
    "deleted rng file": lambda c: (c / "rng.safetensors").unlink(),
    "deleted adapter folder": lambda c: shutil.rmtree(c / "adapter"),
    "empty newer step": lambda c: (c.parent / "step-000005").mkdir(),
    "flipped tensor bytes": damage_file("optimizer.safetensors", flipped),
    "NaN weights": damage_file(ADAPTER, nan_weights),
}


@pytest.mark.parametrize("variant", list(DAMAGE))
def test_a_damaged_checkpoint_is_skipped_for_the_newest_intact_one(
    finished: Path, tmp_path: Path, variant: str, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "runs" / "run"
    shutil.copytree(finished, run)
    # as if killed after step 4 was saved: nothing of step 6 survives
    shutil.rmtree(run / "checkpoints" / "step-000006")
    shutil.rmtree(run / "adapter")
    newest = run / "checkpoints" / "step-000004"
    DAMAGE[variant](newest)
    config = json.loads(json.dumps(_saved_config(finished)))
    config["output_dir"] = str(tmp_path / "runs")
    result = train(validate_config(config, "t"), resume=True)
    said = capsys.readouterr().out
    assert result.steps == 6
    skipped = "step-000005" if variant == "empty newer step" else "step-000004"
    assert f"skipping {skipped}" in said, said
    expected = load_file(finished / "adapter" / "adapter_model.safetensors")
    again = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(again[k], expected[k]) for k in expected)


def test_with_no_intact_checkpoint_resume_says_so(finished: Path, tmp_path: Path) -> None:
    from tunelab.errors import TunelabError

    run = tmp_path / "runs" / "run"
    shutil.copytree(finished, run)
    for checkpoint in (run / "checkpoints").iterdir():
        DAMAGE["truncated safetensors"](checkpoint)
    config = _saved_config(finished) | {"output_dir": str(tmp_path / "runs")}
    with pytest.raises(TunelabError, match="no intact checkpoint to resume from") as caught:
        train(validate_config(config, "t"), resume=True)
    assert str(caught.value).count("does not match") + str(caught.value).count("bytes") == 3


def _saved_config(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))


def test_a_save_killed_midway_leaves_a_staging_folder_the_next_start_removes(
    finished: Path, tmp_path: Path
) -> None:
    run = tmp_path / "runs" / "run"
    shutil.copytree(finished, run)
    kill_inside_a_save = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tunelab.run_dir import RunDir, atomic_directory\n"
        "with atomic_directory(RunDir(Path(sys.argv[1])).checkpoint(8)) as staging:\n"
        "    (staging / 'optimizer.safetensors').write_bytes(b'half' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", kill_inside_a_save, str(run)], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers and all(".partial-" in name for name in leftovers)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(_saved_config(finished) | {"output_dir": str(tmp_path / "runs")}))
    resumed = tunelab("train", str(config), "--resume", "--set", "train.max_steps=8")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert checkpoint_problem(run / "checkpoints" / "step-000008") is None


def test_a_resumed_run_logs_each_step_once(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "checkpoints" / "step-000006")
    shutil.rmtree(run / "adapter")
    config = _saved_config(finished) | {"output_dir": str(tmp_path / "runs")}
    train(validate_config(config, "t"), resume=True)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_a_run_killed_before_its_first_checkpoint_starts_again(
    qwen3_dir: Path, write_jsonl, tmp_path: Path
) -> None:
    data = write_jsonl(alpaca_rows(20))
    raw = config_of(qwen3_dir, data, tmp_path / "runs", max_steps=2, save_every=None)
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"tunelab": 1}')
    (run / "config.yaml").write_text("name: run\n")
    (run / "checkpoints").mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    assert train(validate_config(raw, "t")).steps == 2  # no --resume, no --overwrite needed
    shutil.rmtree(run / "adapter")
    shutil.rmtree(run / "checkpoints")  # as if killed before the first save
    (run / "metrics.jsonl").write_text("")
    assert train(validate_config(raw, "t"), resume=True).steps == 2  # nothing to resume: starts


def test_divergence_stops_with_a_finite_last_checkpoint(
    qwen3_dir: Path, write_jsonl, tmp_path: Path
) -> None:
    data = write_jsonl(alpaca_rows(40))
    raw = config_of(
        qwen3_dir, data, tmp_path / "runs", max_steps=40, save_every=1, learning_rate=1e30
    )
    raw["lora"]["dropout"] = 0.0
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    done = tunelab("train", str(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "training diverged" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert "learning_rate (now 1e+30)" in " ".join(done.stdout.split())
    run = tmp_path / "runs" / "run"
    assert not (run / "adapter").exists()
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert checkpoints
    for checkpoint in checkpoints:
        weights = load_file(checkpoint / "adapter" / "adapter_model.safetensors")
        assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("update_skipped") for r in lines)  # valid JSON: NaN became null
    assert max(r["step"] for r in lines) < 40


def mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)])
    return done.returncode == 0


def test_a_full_disk_stops_with_the_space_needed_and_the_last_checkpoint_intact(
    qwen3_dir: Path, write_jsonl, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "4m"):
        pytest.skip("mounting a small tmpfs is not allowed here")
    try:
        data = write_jsonl(alpaca_rows(40))
        raw = config_of(qwen3_dir, data, disk, max_steps=100000, save_every=1, keep_checkpoints=1)
        path = tmp_path / "c.json"
        path.write_text(json.dumps(raw))
        process = subprocess.Popen(
            [sys.executable, "-m", "tunelab", "train", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not list((disk / "run" / "checkpoints").glob("step-*")):
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            free = shutil.disk_usage(disk).free
            (disk / "filler").write_bytes(b"\0" * max(free - 40_000, 0))
            output = process.communicate(timeout=300)[0]
        finally:
            with suppress(ProcessLookupError):
                process.kill()
        assert process.returncode == 1, output
        assert "not enough disk space" in output and "Traceback" not in output, output
        checkpoints = disk / "run" / "checkpoints"
        assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]
        (last,) = sorted(checkpoints.glob("step-*"))
        assert checkpoint_problem(last) is None
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.parametrize("name", ["..", "../x", "/abs/run", "a/b", ".hidden", ""])
def test_a_run_name_is_one_folder_name(
    qwen3_dir: Path, write_jsonl, tmp_path: Path, name: str
) -> None:
    data = write_jsonl(alpaca_rows(12))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config_of(qwen3_dir, data, tmp_path / "runs", max_steps=1)))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    done = tunelab(
        "train",
        str(path),
        "--set",
        f"name={json.dumps(name)}",
        "--set",
        f"output_dir={tmp_path / 'runs'}",
        "--overwrite",
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "name:" in done.stdout and "not one folder name" in done.stdout, done.stdout
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_overwrite_never_deletes_what_is_not_a_run(
    qwen3_dir: Path, write_jsonl, tmp_path: Path
) -> None:
    data = write_jsonl(alpaca_rows(12))
    precious = tmp_path / "runs" / "mine"
    precious.mkdir(parents=True)
    (precious / "thesis.txt").write_text("years of work")
    raw = config_of(qwen3_dir, data, tmp_path / "runs", name="mine", max_steps=1)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    before = {str(p): p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    done = tunelab("train", str(path), "--overwrite")
    assert done.returncode == 2 and "is not a tunelab run" in done.stdout, done.stdout
    assert {str(p): p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_evaluation_name_stays_inside_the_run(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "run"
    shutil.copytree(finished, run)
    done = tunelab("eval", str(run), "--name", "../../../escaped")
    assert done.returncode == 2 and "not one folder name" in done.stdout, done.stdout
    assert not list(tmp_path.rglob("escaped"))


def test_output_dir_that_is_a_file_is_a_clear_error(
    qwen3_dir: Path, write_jsonl, tmp_path: Path
) -> None:
    data = write_jsonl(alpaca_rows(12))
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config_of(qwen3_dir, data, blocker, max_steps=1)))
    done = tunelab("train", str(path))
    assert done.returncode == 2 and "cannot create the run directory" in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr
