"""The studio's workspace: the one folder it reads and writes, and what it knows of its runs.

Every path a request names is resolved here and refused unless it stays inside the workspace
after symlinks are followed. A run's status is read from its directory (run.json, the
launcher's launch.json and whether that process still lives), so it is right after a page
refresh or a studio restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.run_dir import RunDir, folder_name_problem

RUNS_FOLDER = "runs"


class OutsideWorkspace(TunelabError):
    """A path that leaves the workspace (``..``, an absolute path, a symlink out of it)."""


@dataclass(frozen=True)
class Workspace:
    """The folder the studio serves; runs live in ``runs/`` under it."""

    root: Path

    @classmethod
    def at(cls, folder: Path | str) -> Workspace:
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise TunelabError(f"--workspace {folder}: not a directory")
        return cls(root)

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS_FOLDER

    def resolve(self, relative: str) -> Path:
        """``relative`` as a path inside the workspace, or OutsideWorkspace."""
        if not relative or "\x00" in relative:
            raise OutsideWorkspace("expected a path inside the workspace")
        candidate = Path(relative)
        if candidate.is_absolute() or candidate.drive:
            raise OutsideWorkspace(f"{relative}: absolute paths are refused; give one inside it")
        resolved = (self.root / candidate).resolve()
        if not resolved.is_relative_to(self.root):
            raise OutsideWorkspace(f"{relative}: outside the workspace")
        return resolved

    def relative(self, path: Path) -> str:
        """``path`` as the workspace-relative text the page shows."""
        return path.resolve().relative_to(self.root).as_posix()

    def model_spec(self, name: str) -> str:
        """A model spec from the page: an alias or hub id as it is, a local model only inside
        the workspace (returned as an absolute path, so every process finds it)."""
        looks_local = name.startswith(("/", "~", ".")) or (self.root / name).exists()
        return str(self.resolve(name)) if looks_local else name

    def run(self, name: str) -> RunDir:
        """The run called ``name`` (one folder name under runs/)."""
        problem = folder_name_problem(name)
        if problem:
            raise OutsideWorkspace(f"run name: {problem}")
        return RunDir(self.resolve(f"{RUNS_FOLDER}/{name}"))

    def run_names(self) -> list[str]:
        """Every run in runs/, newest first."""
        if not self.runs_dir.is_dir():
            return []
        found = [p for p in self.runs_dir.iterdir() if p.is_dir() and RunDir(p).is_run()]
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.name for p in found if folder_name_problem(p.name) is None]

    def files(self, suffixes: tuple[str, ...], limit: int = 500) -> list[str]:
        """Data files in the workspace (not inside runs/ or hidden folders)."""
        found: list[str] = []
        for folder, subfolders, names in os.walk(self.root):
            subfolders[:] = sorted(
                d for d in subfolders if not d.startswith(".") and d != RUNS_FOLDER
            )
            for name in sorted(names):
                if name.endswith(suffixes):
                    found.append(self.relative(Path(folder) / name))
                    if len(found) >= limit:
                        return found
        return found


def process_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or {} when it is missing or half written."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_status(run: RunDir) -> dict[str, Any]:
    """running / starting / finished / interrupted / failed, the pid and why, from the
    directory alone."""
    record, launch = read_json(run.record), read_json(run.launch_record)
    status, pid = record.get("status"), record.get("pid") or launch.get("pid")
    if status == "running":
        if process_alive(pid):
            return {"status": "running", "pid": pid}
        return {"status": "failed", "error": f"process {pid} ended without saying how"}
    if status in ("finished", "interrupted", "failed"):
        return {"status": status, "error": record.get("error")}
    if launch:
        if process_alive(launch.get("pid")):
            return {"status": "starting", "pid": launch.get("pid")}
        return {"status": "failed", "error": "ended before its first step: see train.log"}
    if run.results.is_file():
        return {"status": "finished"}
    return {"status": "interrupted" if run.has_trained() else "unknown"}
