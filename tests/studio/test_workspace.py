"""The studio's workspace rules, run status from the directory alone, the form and the
launcher — without a browser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.config_file import load_config
from tunelab.errors import TunelabError
from tunelab.run_dir import RunDir, write_json
from tunelab.studio.form import field_errors, form_fields, raw_config
from tunelab.studio.launch import checked_config
from tunelab.studio.server import studio_token
from tunelab.studio.workspace import OutsideWorkspace, Workspace, process_alive, run_status


@pytest.fixture
def space(tmp_path: Path) -> Workspace:
    (tmp_path / "ws" / "data").mkdir(parents=True)
    (tmp_path / "ws" / "data" / "train.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "secret.txt").write_text("secret")
    return Workspace.at(tmp_path / "ws")


@pytest.mark.parametrize(
    "path", ["../secret.txt", "/etc/passwd", "data/../../secret.txt", "", "a\x00b"]
)
def test_paths_leaving_the_workspace_are_refused(space: Workspace, path: str) -> None:
    with pytest.raises(OutsideWorkspace):
        space.resolve(path)


def test_a_symlink_out_of_the_workspace_is_refused(space: Workspace) -> None:
    (space.root / "data" / "out.txt").symlink_to(space.root.parent / "secret.txt")
    with pytest.raises(OutsideWorkspace, match="outside the workspace"):
        space.resolve("data/out.txt")
    assert space.resolve("data/train.jsonl") == space.root / "data" / "train.jsonl"


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden"])
def test_run_names_are_one_folder_inside_runs(space: Workspace, name: str) -> None:
    with pytest.raises(OutsideWorkspace):
        space.run(name)


def test_a_local_model_must_be_inside_the_workspace(space: Workspace) -> None:
    (space.root / "models" / "tiny").mkdir(parents=True)
    assert space.model_spec("models/tiny") == str(space.root / "models" / "tiny")
    assert space.model_spec("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert space.model_spec("smollm2-135m") == "smollm2-135m"
    with pytest.raises(OutsideWorkspace):
        space.model_spec("/usr/lib")
    with pytest.raises(OutsideWorkspace):
        space.model_spec("../elsewhere")


def test_status_comes_from_the_directory(space: Workspace) -> None:
    run = RunDir(space.runs_dir / "r")
    run.root.mkdir(parents=True)
    assert run_status(run)["status"] == "unknown"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_json(run.launch_record, {"pid": sleeper.pid})
        assert run_status(run) == {"status": "starting", "pid": sleeper.pid}
        write_json(run.record, {"status": "running", "pid": sleeper.pid})
        assert run_status(run)["status"] == "running"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not process_alive(sleeper.pid)
    assert run_status(run)["status"] == "failed", "a running run whose process is gone failed"
    write_json(run.record, {"status": "interrupted", "pid": sleeper.pid, "error": "SIGINT"})
    assert run_status(run) == {"status": "interrupted", "error": "SIGINT"}
    run.record.unlink()
    assert run_status(run)["status"] == "failed", "a launch that died before its first step"


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while True:  # ended but not reaped: a zombie
        state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
    assert not process_alive(child.pid)
    child.wait()


def test_the_form_has_every_config_key_with_description_and_default() -> None:
    fields = {f["key"]: f for f in form_fields()}
    assert fields["train.learning_rate"]["kind"] == "number"
    assert fields["train.learning_rate"]["description"]
    assert fields["task"]["choices"] == ["sft", "classify"]
    assert fields["lora.r"]["default"] == 16
    assert "output_dir" not in fields, "the studio puts runs in the workspace's runs/"
    assert all(f["description"] for f in fields.values()), [
        k for k, f in fields.items() if not f["description"]
    ]


def test_form_values_are_read_as_the_cli_reads_set_options(space: Workspace) -> None:
    raw = raw_config({"name": "x", "train.learning_rate": "3e-4", "data.train": "data/train.jsonl"})
    config, saved = checked_config(space, raw)
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert saved["data"]["train"] == ["../../data/train.jsonl"]
    assert saved["output_dir"] == "runs"
    (space.runs_dir / "x").mkdir(parents=True)
    path = space.runs_dir / "x" / "launch.yaml"
    import yaml

    path.write_text(yaml.safe_dump(saved), encoding="utf-8")
    again = load_config(path)
    assert again.data.train == config.data.train, "the saved YAML repeats the run from the CLI"


def test_form_errors_are_the_cli_messages_by_key(space: Workspace) -> None:
    values = {"name": "x", "data.train": "data/train.jsonl", "lora.r": "0", "train.epochs": "-1"}
    with pytest.raises(TunelabError) as form:
        checked_config(space, raw_config(values))
    with pytest.raises(TunelabError) as cli:
        load_config(None, ["name=x", "data.train=data/train.jsonl", "lora.r=0", "train.epochs=-1"])
    assert str(form.value).splitlines()[1:] == str(cli.value).splitlines()[1:]
    assert set(field_errors(str(form.value))) == {"lora.r", "train.epochs"}


def test_a_token_is_required_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNELAB_STUDIO_TOKEN", raising=False)
    assert studio_token("127.0.0.1") is None
    with pytest.raises(TunelabError, match="TUNELAB_STUDIO_TOKEN"):
        studio_token("0.0.0.0")
    monkeypatch.setenv("TUNELAB_STUDIO_TOKEN", "t0k")
    assert studio_token("0.0.0.0") == "t0k"


def test_the_token_guards_every_request(tmp_path: Path) -> None:
    from studio_helpers import http, studio_process

    with studio_process(tmp_path, {"TUNELAB_STUDIO_TOKEN": "t0k"}) as port:
        assert http(port, "/api/runs")[0] == 403
        assert http(port, "/api/runs", headers={"Authorization": "Bearer nope"})[0] == 403
        assert http(port, "/api/runs", headers={"Authorization": "Bearer t0k"}) == (200, [])
        assert http(port, "/api/runs?token=t0k") == (200, [])


def test_launched_processes_keep_the_users_thread_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tunelab.studio import launch

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(launch, "_launch_environment", None)
    launch.remember_environment()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what the studio sets for itself
    assert "OMP_WAIT_POLICY" not in launch.child_environment()
    assert launch.child_environment()["PYTHONUNBUFFERED"] == "1"


def test_a_followed_run_reads_each_whole_metrics_line_once(tmp_path: Path) -> None:
    from tunelab.studio.app import _skip_lines
    from tunelab.studio.runs import metrics_after

    run = RunDir(tmp_path)
    run.metrics.write_text('{"step": 1}\n{"step": 2}\n{"st', encoding="utf-8")
    records, offset = metrics_after(run, 0)
    assert records == [{"step": 1}, {"step": 2}], "the half-written line waits"
    assert metrics_after(run, offset) == ([], offset)
    with run.metrics.open("a", encoding="utf-8") as handle:
        handle.write('ep": 3}\n')
    assert metrics_after(run, offset)[0] == [{"step": 3}]
    assert _skip_lines(run, 1) == (1, len('{"step": 1}\n'))  # a page reconnecting after line 1
    assert _skip_lines(run, 9)[0] == 3
