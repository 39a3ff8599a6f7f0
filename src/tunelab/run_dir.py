"""The layout of a run directory: everything a run writes, and everything later commands read."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

CHECKPOINT_PREFIX = "step-"
# what a launcher (tunelab studio) writes before `tunelab train` starts, kept by a fresh start
LAUNCH_FILES = ("launch.yaml", "launch.json", "train.log")
# one folder name: letters (any script), digits, '.', '-', '_'; not starting with '.' or '-'
FOLDER_NAME = re.compile(r"\w[\w.\-]*")
MAX_NAME = 100


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run or an evaluation folder, or None.

    >>> folder_name_problem("sentiment-v2") is None
    True
    >>> folder_name_problem("../x")
    "'../x' is not one folder name: use letters, digits, '.', '-' and '_' (no '/', no '..')"
    """
    if len(name) <= MAX_NAME and FOLDER_NAME.fullmatch(name) and ".." not in name:
        return None
    return (
        f"{name!r} is not one folder name: use letters, digits, '.', '-' and '_' (no '/', no '..')"
    )


def default_name(stem: str) -> str:
    """A run name from a config file's stem: characters a name cannot hold become '-'.

    >>> default_name("my config (v2)")
    'my-config-v2'
    """
    cleaned = re.sub(r"[^\w.\-]+", "-", stem).strip(".-")
    cleaned = re.sub(r"\.\.+", ".", cleaned)
    return cleaned[:MAX_NAME] or "run"


@dataclass(frozen=True)
class RunDir:
    """Paths inside ``runs/<name>/``."""

    root: Path

    @property
    def config(self) -> Path:
        """The resolved config: everything downstream needs only this directory."""
        return self.root / "config.yaml"

    @property
    def data_report(self) -> Path:
        """Counts of kept / rejected / truncated rows and token lengths."""
        return self.root / "data_report.json"

    @property
    def rejects(self) -> Path:
        """One line per rejected row: file, line or row, field, reason."""
        return self.root / "rejects.jsonl"

    @property
    def metrics(self) -> Path:
        """One line per logged step and per evaluation."""
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files."""
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        """``step-NNNNNN`` directories, written atomically."""
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        """The final adapter with the tokenizer and chat template beside it."""
        return self.root / "adapter"

    @property
    def labels(self) -> Path:
        """task classify: the label set in id order, used by eval, predict and serve."""
        return self.root / "labels.json"

    @property
    def best(self) -> Path:
        """The adapter that scored best during training (with `eval.every`)."""
        return self.root / "best"

    @property
    def record(self) -> Path:
        """What the run resolved once and every later command uses (its precision)."""
        return self.root / "run.json"

    @property
    def results(self) -> Path:
        """What a finished run achieved: steps, losses, scores."""
        return self.root / "results.json"

    def checkpoint(self, step: int) -> Path:
        """The checkpoint taken after ``step`` optimizer steps."""
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:06d}"

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints.exists():
            return []
        found = self.checkpoints.iterdir()
        return sorted(p for p in found if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))

    def adapter_of(self, checkpoint: str | None = None) -> Path:
        """The adapter of ``checkpoint``: `final` (None), `best`, or the step number N."""
        if checkpoint in (None, "final"):
            folder = self.adapter
        elif checkpoint == "best":
            folder = self.best
        elif str(checkpoint).isdigit():
            folder = self.checkpoint(int(checkpoint)) / "adapter"
        else:
            raise TunelabError(f"--checkpoint {checkpoint}: expected final, best or a step number")
        if not (folder / "adapter_config.json").is_file():
            raise TunelabError(
                f"{folder}: no adapter there; has the run finished (or saved that step)?"
            )
        return folder

    def read_labels(self) -> list[str]:
        """task classify: the label set in id order."""
        return json.loads(self.labels.read_text(encoding="utf-8"))["labels"]

    def write_labels(self, labels: list[str]) -> None:
        """task classify: record the label set in id order."""
        write_json(self.labels, {"labels": labels})

    def read_record(self) -> dict[str, Any]:
        """run.json, or an empty record for a run written before it existed."""
        if not self.record.is_file():
            return {}
        return json.loads(self.record.read_text(encoding="utf-8"))

    def eval_dir(self, name: str) -> Path:
        """Where one evaluation's metrics and predictions go (``name``: one folder name)."""
        problem = folder_name_problem(name)
        if problem:
            raise TunelabError(f"--name: {problem}")
        return self.root / "eval" / name

    def is_run(self) -> bool:
        """Whether the directory is a tunelab run: it carries run.json or a launcher's
        launch.json (or, from before run.json, a config.yaml beside checkpoints or metrics)."""
        legacy = self.config.is_file() and (self.checkpoints.is_dir() or self.metrics.is_file())
        return self.record.is_file() or self.launch_record.is_file() or legacy

    def has_trained(self) -> bool:
        """Whether the run completed a step that was saved (a checkpoint or the adapter)."""
        return bool(self.list_checkpoints()) or self.adapter.is_dir()

    def start(self, resume: bool, overwrite: bool) -> None:
        """Make the directory ready; never mix a new run into an old one, never delete what
        is not a tunelab run.

        An existing run that saved a step needs --resume (continue) or --overwrite (delete
        it and start again); one that never saved a step starts again without ceremony.
        Unfinished saves of an earlier, killed process are removed.
        """
        if self.root.exists() and not self.root.is_dir():
            raise TunelabError(f"{self.root}: exists and is not a directory")
        if self.root.is_dir() and any(self.root.iterdir()):
            if not self.is_run():
                raise TunelabError(
                    f"{self.root} holds files and is not a tunelab run (no run.json): "
                    "nothing there is touched; choose another name or output_dir"
                )
            self.remove_unfinished_saves()
            keep = self.has_trained() and not overwrite
            if keep and not resume:
                raise TunelabError(
                    f"{self.root} already holds a run; add --resume to continue it, "
                    "--overwrite to start again, or --set name=NEW for a new run"
                )
            if not keep:
                self.clear(keep=LAUNCH_FILES)
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TunelabError(f"{self.root}: cannot create the run directory: {error}") from None
        if not self.record.is_file():
            write_json(self.record, {"tunelab": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        """Delete everything in the run directory but the files named in ``keep``."""
        for path in self.root.iterdir():
            if path.name in keep and path.is_file():
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    @property
    def launch_config(self) -> Path:
        """The config a launcher wrote (tunelab studio): `tunelab train` repeats the run."""
        return self.root / "launch.yaml"

    @property
    def launch_record(self) -> Path:
        """The launcher's record of the process it started: pid, command, time."""
        return self.root / "launch.json"

    @property
    def jobs_record(self) -> Path:
        """The launcher's background jobs on the run (evaluate, merge): pid, command, time."""
        return self.root / "jobs.json"

    @property
    def train_log(self) -> Path:
        """Everything a launched `tunelab train` printed."""
        return self.root / "train.log"

    def remove_unfinished_saves(self) -> list[str]:
        """Delete the staging folders a killed save left behind; returns their names."""
        found = []
        for folder in (self.root, self.checkpoints):
            if folder.is_dir():
                found += [p for p in folder.iterdir() if p.is_dir() and _unfinished(p.name)]
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
        return [p.name for p in found]

    def update_record(self, **values: Any) -> None:
        """Add keys to run.json."""
        write_json(self.record, {**self.read_record(), **values})

    def truncate_metrics(self, step: int) -> int:
        """Drop the lines logged after ``step`` (a resumed run repeats them); returns how many."""
        records = self.read_metrics()
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) < len(records):
            text = "".join(_json_line(r) for r in kept)
            self.metrics.write_text(text, encoding="utf-8")
        return len(records) - len(kept)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one line to metrics.jsonl (a non-finite number is written as null)."""
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(_json_line(record))

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every line of metrics.jsonl."""
        if not self.metrics.exists():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def write_json(path: Path, value: Any) -> None:
    """Pretty JSON, UTF-8, Chinese left readable; NaN and infinities become null (JSON has
    no such numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite_json(value), ensure_ascii=False, indent=2, allow_nan=False)
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    staging.write_text(text + "\n", encoding="utf-8")
    os.replace(staging, path)  # a reader (the studio) never sees half a file


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None.

    >>> finite_json({"loss": float("nan"), "steps": [1.5, float("inf")]})
    {'loss': None, 'steps': [1.5, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(finite_json(record), ensure_ascii=False, allow_nan=False) + "\n"


def _unfinished(name: str) -> bool:
    """A staging or retired folder of ``atomic_directory`` (or of releases before it)."""
    return name.startswith(".") and (".partial-" in name or ".old-" in name)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A staging folder that takes ``target``'s place only when the block completes.

    A crash leaves the old ``target`` (or none) and a hidden staging folder, never a
    half-written ``target``.
    """
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        _sync_tree(staging)  # the files' bytes are on disk before the rename makes them live
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    _sync(target.parent)  # and the rename itself
    shutil.rmtree(retired, ignore_errors=True)


def _sync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        _sync(path)
    _sync(folder)


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
