"""What a server serves: each run by name (and the base model of its SFT runs), opened through
``open_run``, with where it came from."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.generate import GrammarCache
from tunelab.use.open import OpenedRun, open_run
from tunelab.use.serve.engine import Engine


@dataclass
class Served:
    """One model id: the opened run, its decoding engine (or a lock for a class head), and
    its provenance."""

    id: str
    opened: OpenedRun
    provenance: dict[str, Any]
    engine: Engine | None = None
    grammars: GrammarCache | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def classifies(self) -> bool:
        """A class-head run: it answers /v1/classify, not completions."""
        return bool(self.opened.labels)


def parse_names(runs: list[Path], aliases: list[str]) -> dict[str, Path]:
    """Model ids for the runs: each run's folder name, or the alias ``alias=runs/X`` gives
    it (a run named only by an alias is served too)."""
    names = {path.resolve(): path.resolve().name for path in runs}
    for alias in aliases:
        name, sep, target = alias.partition("=")
        if not sep or not name or not target:
            raise TunelabError(f"--name {alias!r}: expected alias=runs/X")
        names[Path(target).resolve()] = name
    named = {name: path for path, name in names.items()}
    if len(named) < len(names):
        raise TunelabError("two runs have the same name; give one another with --name NEW=PATH")
    return named


def load_models(named: dict[str, Path], max_batch: int, max_queue: int) -> dict[str, Served]:
    """Open every run, and the base model of the SFT ones, each with its engine."""
    served: dict[str, Served] = {}
    for name, path in named.items():
        opened = open_run(path)
        served[name] = _serve(name, opened, provenance(opened), max_batch, max_queue)
        base = opened.config.model.name
        if not opened.labels and base not in served and base not in named:
            plain = open_run(path, base_only=True)
            info = {"base_model": base, "task": "base", "run": None}
            served[base] = _serve(base, plain, info, max_batch, max_queue)
    return served


def _serve(name: str, opened: OpenedRun, info: dict, max_batch: int, max_queue: int) -> Served:
    if opened.labels:
        return Served(name, opened, info)
    engine = Engine(opened.model, opened.tokenizer, max_batch, max_queue)
    grammars = GrammarCache(opened.tokenizer, opened.model.config.vocab_size)
    return Served(name, opened, info, engine, grammars)


def provenance(opened: OpenedRun) -> dict[str, Any]:
    """Where a run's model came from: base, task, data digest, steps, best score, created."""
    run = opened.run
    results = _json(run.results)
    record = run.read_record()
    return {
        "run": str(run.root),
        "base_model": opened.config.model.name,
        "task": opened.config.task,
        "adapter": str(opened.adapter) if opened.adapter else None,
        "training_data": data_digest(opened),
        "steps": results.get("steps"),
        "metric": results.get("metric"),
        "best": results.get("best"),
        "scores": results.get("scores", {}),
        "precision": opened.precision,
        "created": record.get("created"),
    }


def data_digest(opened: OpenedRun) -> str | None:
    """SHA-256 over the training files the run read (as they are now), or None."""
    paths = [Path(p) for p in opened.config.data.train]
    if not paths or not all(p.is_file() for p in paths):
        return None
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def created_at(served: Served) -> int:
    """The run's creation time in seconds since 1970 (now, when unknown)."""
    stamp = served.provenance.get("created")
    if not stamp:
        return int(time.time())
    return int(time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")))


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
