"""Starting and stopping `tunelab` processes for the studio.

A launch validates the form's config with the CLI's own code, writes it as
``runs/NAME/launch.yaml`` (so `tunelab train runs/NAME/launch.yaml`, run from the workspace,
repeats it), and starts `tunelab train` as a detached process: its own session, stdin closed,
stdout and stderr appended to ``train.log`` in the run directory, never a pipe a closed page
could leave full. Only tunelab's own commands are ever started, with arguments built here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import RunConfig
from tunelab.config_file import validate_config
from tunelab.errors import TunelabError
from tunelab.run_dir import RunDir, write_json
from tunelab.studio.runs import running_jobs
from tunelab.studio.workspace import RUNS_FOLDER, Workspace, read_json, run_status

# the form's keys that name files: checked against the workspace, written relative to the run
DATA_PATH_KEYS = ("train", "val")
JOBS = {"evaluate", "merge"}


def checked_config(workspace: Workspace, raw: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """The form's mapping validated as `tunelab train` validates a YAML file, and the mapping
    to save (data paths relative to the run directory). Raises TunelabError with the CLI's
    messages."""
    raw = {k: v for k, v in raw.items() if v is not None}
    if not isinstance(raw.get("name"), str) or not raw["name"].strip():
        raise TunelabError("form: 1 config error(s):\n  name: give the run a name (got None)")
    raw["output_dir"] = RUNS_FOLDER
    data = dict(raw.get("data") or {})
    checked: dict[str, Any] = {**raw, "data": data}
    for key in DATA_PATH_KEYS:
        value = data.get(key)
        paths = [value] if isinstance(value, str) else value
        if not paths or not isinstance(paths, list):
            continue
        resolved = [workspace.resolve(str(p)) for p in paths]
        data[key] = [str(p) for p in resolved]
    _check_model(workspace, checked)
    config = validate_config(checked, "form")
    saved = {**raw, "data": dict(data)}
    if "model" in checked:
        saved["model"] = checked["model"]
    run_root = workspace.runs_dir / config.name
    for key in DATA_PATH_KEYS:
        if key in data:
            saved["data"][key] = [os.path.relpath(p, run_root) for p in data[key]]
    return config, saved


def _check_model(workspace: Workspace, raw: dict[str, Any]) -> None:
    model = raw.get("model")
    if isinstance(model, str):
        raw["model"] = workspace.model_spec(model)
    elif isinstance(model, dict) and isinstance(model.get("name"), str):
        raw["model"] = {**model, "name": workspace.model_spec(model["name"])}


def launch_train(workspace: Workspace, raw: dict[str, Any], overwrite: bool = False) -> str:
    """Validate, save and start a training run; returns its name."""
    config, saved = checked_config(workspace, raw)
    run = workspace.run(config.name)
    if run.root.exists() and any(run.root.iterdir()):
        _refuse_busy(run)
        if run.has_trained() and not overwrite:
            raise TunelabError(
                f"run {config.name!r} already exists: choose another name, resume it, "
                "or tick 'overwrite'"
            )
        if not run.is_run():
            raise TunelabError(f"{RUNS_FOLDER}/{config.name} holds files and is not a run")
    run.root.mkdir(parents=True, exist_ok=True)
    for stale in (run.record, run.train_log):
        stale.unlink(missing_ok=True)
    text = yaml.safe_dump(saved, sort_keys=False, allow_unicode=True)
    run.launch_config.write_text(text, encoding="utf-8")
    arguments = ["train", f"{RUNS_FOLDER}/{config.name}/launch.yaml"]
    start(workspace, run, [*arguments, *(["--overwrite"] if overwrite else [])], "train")
    return config.name


def resume(workspace: Workspace, name: str) -> None:
    """Continue a stopped run from its newest checkpoint, with the config it was run with."""
    run = workspace.run(name)
    _refuse_busy(run)
    if not run.list_checkpoints():
        raise TunelabError(f"run {name!r} has no checkpoint to resume from")
    config = run.launch_config if run.launch_config.is_file() else run.config
    if not config.is_file():
        raise TunelabError(f"run {name!r} has no config to resume with")
    start(workspace, run, ["train", workspace.relative(config), "--resume"], "train")


def run_job(workspace: Workspace, name: str, job: str) -> None:
    """Evaluate or merge a finished run in the background; output goes to JOB.log."""
    if job not in JOBS:
        raise TunelabError(f"unknown action {job!r}: expected one of {sorted(JOBS)}")
    run = workspace.run(name)
    _refuse_busy(run)
    if not (run.adapter / "adapter_config.json").is_file():
        raise TunelabError(f"run {name!r} has no final adapter yet")
    folder = f"{RUNS_FOLDER}/{name}"
    if job == "evaluate":
        arguments = ["eval", folder, "--name", "studio"]
    else:
        arguments = ["merge", folder, "--output", f"{folder}/merged"]
    start(workspace, run, arguments, job)


def stop(workspace: Workspace, name: str) -> None:
    """The same graceful stop as Ctrl-C: the run finishes its step and saves a checkpoint."""
    run = workspace.run(name)
    state = run_status(run)
    if state["status"] not in ("running", "starting"):
        raise TunelabError(f"run {name!r} is not running ({state['status']})")
    os.kill(int(state["pid"]), signal.SIGINT)


def start(workspace: Workspace, run: RunDir, arguments: list[str], job: str) -> int:
    """Start `python -m tunelab ARGUMENTS` detached from the studio; returns its pid."""
    command = [sys.executable, "-m", "tunelab", *arguments]
    log = log_path(run, job)
    environment = child_environment()
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=workspace.root,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    _children.append(process)
    record = {"pid": process.pid, "command": arguments, "started": time.time(), "job": job}
    if job == "train":
        write_json(run.launch_record, record)
    else:
        write_json(run.jobs_record, {**read_json(run.jobs_record), job: record})
    return process.pid


def child_environment() -> dict[str, str]:
    """The environment of a launched process: the user's, as the studio started."""
    inherited = _launch_environment if _launch_environment is not None else os.environ
    return {**inherited, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}


def reap() -> None:
    """Collect the exit status of finished children, so none lingers as a zombie."""
    for process in list(_children):
        if process.poll() is not None:
            _children.remove(process)


def _refuse_busy(run: RunDir) -> None:
    reap()
    state = run_status(run)
    if state["status"] in ("running", "starting"):
        raise TunelabError(f"run {run.root.name!r} is {state['status']}: stop it first")
    busy = running_jobs(run)
    if busy:
        raise TunelabError(f"run {run.root.name!r} is busy: {', '.join(busy)} running")


_children: list[subprocess.Popen[bytes]] = []
_launch_environment: dict[str, str] | None = None


def remember_environment() -> None:
    """Keep the environment as the user started the studio, for the processes it launches:
    a training run chooses its own thread settings (the studio's are for serving pages)."""
    global _launch_environment
    _launch_environment = dict(os.environ)


def log_path(run: RunDir, job: str) -> Path:
    """Where a job's output goes."""
    return run.train_log if job == "train" else run.root / f"{job}.log"
