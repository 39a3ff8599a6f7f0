"""The allocator under training: found, chosen, preloaded by a restart, recorded by the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import alpaca_rows
from tunelab.cpu.allocator import (
    CHOICE,
    JEMALLOC,
    PRELOAD,
    STARTED_WITH,
    allocator_in_use,
    chosen_library,
    on_glibc,
    packaged_mimalloc,
    preload_command,
    system_jemalloc,
)
from tunelab.errors import TunelabError

glibc_only = pytest.mark.skipif(not on_glibc(), reason="a preload replaces glibc's malloc")
CLEAN = {k: v for k, v in os.environ.items() if k not in (CHOICE, PRELOAD, STARTED_WITH)}


def test_jemalloc_is_found_where_a_package_put_it(tmp_path) -> None:
    empty, packaged = tmp_path / "empty", tmp_path / "lib"
    empty.mkdir()
    packaged.mkdir()
    (packaged / JEMALLOC).write_bytes(b"\x7fELF")
    assert system_jemalloc([empty]) is None
    assert system_jemalloc([empty, packaged]) == packaged / JEMALLOC


@glibc_only
def test_the_mimalloc_wheel_a_linux_install_depends_on_is_found() -> None:
    library = packaged_mimalloc()
    assert library is not None and library.name.startswith("libmimalloc.so")
    assert library.read_bytes()[:4] == b"\x7fELF"
    assert packaged_mimalloc("no-such-distribution") is None


def test_the_users_choice_wins_and_a_wrong_path_is_a_clear_error(tmp_path) -> None:
    own = tmp_path / "libown.so"
    own.write_bytes(b"\x7fELF")
    assert chosen_library({CHOICE: "system"}) is None
    assert chosen_library({CHOICE: str(own)}) == own.resolve()
    with pytest.raises(TunelabError, match=rf"{CHOICE}=.*missing.so: no such file.*'system'"):
        chosen_library({CHOICE: str(tmp_path / "missing.so")})
    assert chosen_library({}) in (system_jemalloc(), packaged_mimalloc())


@glibc_only
def test_a_restart_preloads_the_library_once_and_leaves_a_users_preload_alone(tmp_path) -> None:
    own = tmp_path / "libown.so"
    own.write_bytes(b"\x7fELF")
    argv = ["python3", "-X", "dev", "/venv/bin/tunelab", "train", "c.yaml", "--budget", "10m"]
    command, environment = preload_command(argv, {**CLEAN, CHOICE: str(own)})
    assert command == [sys.executable, *argv[1:]]
    assert environment[PRELOAD] == environment[STARTED_WITH] == str(own.resolve())
    assert preload_command(argv, environment) is None  # the restarted process goes on
    assert preload_command(argv, {**CLEAN, PRELOAD: "/opt/libtcmalloc.so"}) is None
    assert preload_command(argv, {**CLEAN, CHOICE: "system"}) is None


def test_the_allocator_in_use_is_read_from_the_mapped_libraries(tmp_path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator_in_use(maps) == "system"
    maps.write_text("7f00-7f01 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert allocator_in_use(maps) == "jemalloc"
    assert allocator_in_use(tmp_path / "absent") == "system"


def train_tiny(
    model_dir: Path, data: Path, folder: Path, launcher: list[str] | None = None, **env: str
) -> dict:
    """`tunelab train` of 2 steps in a fresh process started by ``launcher`` (default:
    ``python -m tunelab``); returns its run.json."""
    raw = {
        "name": "run",
        "output_dir": str(folder),
        "model": str(model_dir),
        "data": {"train": str(data), "max_length": 64},
        "train": {"batch_size": 4, "max_steps": 2},
        "eval": {"generate": False},
    }
    (folder / "c.json").write_text(json.dumps(raw))
    command = [*(launcher or [sys.executable, "-m", "tunelab"]), "train", str(folder / "c.json")]
    done = subprocess.run(
        [*command, "--overwrite"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**CLEAN, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((folder / "run" / "run.json").read_text())


@glibc_only
def test_a_training_run_restarts_on_the_faster_allocator_unless_told_not_to(
    qwen3_dir, write_jsonl, tmp_path
) -> None:
    data = write_jsonl(alpaca_rows(16))
    expected = "jemalloc" if system_jemalloc() else "mimalloc"
    assert train_tiny(qwen3_dir, data, tmp_path)["allocator"] == expected
    assert train_tiny(qwen3_dir, data, tmp_path, **{CHOICE: "system"})["allocator"] == "system"


WRAPPER = """import sys
from pathlib import Path
from tunelab.cli.main import main

with open(Path(__file__).with_suffix(".starts"), "a") as starts:
    starts.write(f"{sorted(sys._xoptions)} {sys.flags.optimize}\\n")
main()
"""


@glibc_only
def test_the_restart_runs_the_users_own_script_and_interpreter_options_again(
    qwen3_dir, write_jsonl, tmp_path
) -> None:
    # a script that sets things up and then calls tunelab's main(), under -X and -O
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    launcher = [sys.executable, "-X", "tunelab_check", "-O", str(script)]
    run = train_tiny(qwen3_dir, write_jsonl(alpaca_rows(16)), tmp_path, launcher)
    assert run["allocator"] != "system"
    starts = script.with_suffix(".starts").read_text().splitlines()
    assert starts == ["['tunelab_check'] 1", "['tunelab_check'] 1"]  # before and after
