"""Event logs -> next-event samples: history windows per session, split in time order.

A sample is the last `window` events of a session (oldest first) and the event that came
next. Samples are split by the time of the event to predict: train on the earliest, validate
on the next, test on the latest, so no model ever sees the future of what it is scored on.
The split points are recorded with the build.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tunelab.behavior.events import Event, EventLog
from tunelab.errors import TunelabError
from tunelab.run_dir import write_json

SPLITS = ("train", "val", "test")
BUILD_FILE = "behavior.json"


@dataclass(frozen=True)
class BuildOptions:
    """How samples are cut from a log."""

    window: int = 5
    session_gap_minutes: float = 24 * 60
    min_history: int = 1
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    predict_time: bool = False
    max_samples: dict[str, int] = field(default_factory=dict)  # split -> cap
    seed: int = 0


@dataclass
class Sample:
    """History -> next event, with what scoring and the simulation need."""

    history: list[Event]
    next: Event

    def row(self, options: BuildOptions) -> dict[str, Any]:
        """The sample as an instruction row (alpaca) plus the fields scoring reads."""
        return {
            "instruction": render_prompt(self.history),
            "output": render_answer(self.next, self.history[-1], options.predict_time),
            "user": self.next.user,
            "time": self.next.time.isoformat(sep=" "),
            "recent": [e.answer for e in self.history],
            "recent_apps": [e.app for e in self.history],
            "key": self.next.key,
            "app": self.next.app,
        }


def render_prompt(history: Sequence[Event]) -> str:
    """What the model reads: the recent events, one per line, oldest first."""
    lines = [f"{e.time:%Y-%m-%d %H:%M} {e.answer}" for e in history]
    return (
        f"The last {len(lines)} events of one user, oldest first (time action | target | "
        "details):\n" + "\n".join(lines) + "\nWhat is the user's next event?"
    )


def render_answer(event: Event, last: Event, predict_time: bool) -> str:
    """The target text: the event, and its delay after the last one when times are predicted."""
    if not predict_time:
        return event.answer
    minutes = max(0, round((event.time - last.time).total_seconds() / 60))
    return f"{event.answer} @ +{minutes}m"


def sessions(events: Sequence[Event], gap_minutes: float) -> list[list[Event]]:
    """Events (sorted by user and time) cut into sessions at user changes and long gaps."""
    gap = timedelta(minutes=gap_minutes)
    cut: list[list[Event]] = []
    for event in events:
        current = cut[-1] if cut else None
        if current and current[-1].user == event.user and event.time - current[-1].time <= gap:
            current.append(event)
        else:
            cut.append([event])
    return cut


def windows(session: Sequence[Event], options: BuildOptions) -> list[Sample]:
    """Every event of a session with enough history becomes a sample."""
    return [
        Sample(list(session[max(0, i - options.window) : i]), session[i])
        for i in range(options.min_history, len(session))
    ]


def split_points(samples: Sequence[Sample], fractions: Sequence[float]) -> list[datetime]:
    """The two times that divide the samples' target times into train / val / test."""
    times = sorted(s.next.time for s in samples)
    if len(times) < 3:
        raise TunelabError(f"only {len(times)} samples: too few to split in time order")
    first = times[min(len(times) - 1, int(len(times) * fractions[0]))]
    second = times[min(len(times) - 1, int(len(times) * (fractions[0] + fractions[1])))]
    return [first, second]


def assign(samples: Sequence[Sample], points: Sequence[datetime]) -> dict[str, list[Sample]]:
    """Samples by split: before the first point, before the second, the rest."""
    parts: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for sample in samples:
        when = sample.next.time
        name = "train" if when < points[0] else "val" if when < points[1] else "test"
        parts[name].append(sample)
    return parts


def cap(parts: dict[str, list[Sample]], options: BuildOptions) -> dict[str, int]:
    """Apply the per-split caps; returns how many samples each cap left out.

    Training keeps a seeded random subset (still all from before the split point); val and
    test keep whole users, so each kept user's events stay consecutive for the simulation.
    """
    dropped = {}
    rng = random.Random(options.seed)
    for name, limit in options.max_samples.items():
        kept = parts[name]
        if limit >= len(kept):
            continue
        if name == "train":
            chosen = sorted(rng.sample(range(len(kept)), limit))
            parts[name] = [kept[i] for i in chosen]
        else:
            parts[name] = _whole_users(kept, limit, rng)
        dropped[name] = len(kept) - len(parts[name])
    return dropped


def _whole_users(samples: list[Sample], limit: int, rng: random.Random) -> list[Sample]:
    by_user: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_user[sample.next.user].append(sample)
    users = sorted(by_user)
    rng.shuffle(users)
    kept: list[Sample] = []
    for user in users:
        if len(kept) >= limit:
            break
        kept.extend(by_user[user][: limit - len(kept)])
    return sorted(kept, key=lambda s: (s.next.user, s.next.time))


def build_samples(log: EventLog, options: BuildOptions) -> tuple[dict[str, list[Sample]], dict]:
    """Split a log's samples in time order; returns the parts and the build record."""
    if not log.events:
        shown = "".join(f"\n  {reject}" for reject in log.rejects[:5])
        raise TunelabError(
            f"no events to build samples from: {log.read} rows read, {len(log.rejects)} "
            f"rejected{shown}"
        )
    every = [
        s
        for session in sessions(log.events, options.session_gap_minutes)
        for s in windows(session, options)
    ]
    points = split_points(every, options.split)
    parts = assign(every, points)
    dropped = cap(parts, options)
    for name in SPLITS:
        parts[name].sort(key=lambda s: (s.next.time, s.next.user))
    record = {
        "options": {
            "window": options.window,
            "session_gap_minutes": options.session_gap_minutes,
            "min_history": options.min_history,
            "split": list(options.split),
            "predict_time": options.predict_time,
            "max_samples": options.max_samples,
            "seed": options.seed,
        },
        "split_points": [p.isoformat(sep=" ") for p in points],
        "events": {"read": log.read, "kept": len(log.events), "rejected": len(log.rejects)},
        "samples": {name: len(parts[name]) for name in SPLITS},
        "left_out_by_caps": dropped,
        "users": len({e.user for e in log.events}),
        "vocabulary": vocabulary(parts["train"]),
    }
    return parts, record


def vocabulary(train: Sequence[Sample]) -> dict[str, Any]:
    """What training showed: actions with their targets, details, and the app of each key."""
    targets: dict[str, Counter[str]] = defaultdict(Counter)
    details: Counter[str] = Counter()
    apps: dict[str, str] = {}
    for sample in train:
        for event in [*sample.history, sample.next]:
            targets[event.action][event.target] += 1
            details[event.details] += 1
            if event.app:
                apps[event.key] = event.app
    return {
        "actions": {a: [t for t, _ in c.most_common()] for a, c in sorted(targets.items())},
        "details": [d for d, _ in details.most_common()],
        "apps": apps,
    }


def write_build(
    folder: Path, parts: dict[str, list[Sample]], record: dict, log: EventLog, options: BuildOptions
) -> None:
    """train/val/test.jsonl, behavior.json (options, split points, counts), rejects.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as out:
            for sample in parts[name]:
                out.write(json.dumps(sample.row(options), ensure_ascii=False) + "\n")
    with (folder / "rejects.jsonl").open("w", encoding="utf-8") as out:
        for reject in log.rejects:
            out.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
    write_json(folder / BUILD_FILE, record)


def read_split(folder: Path, name: str) -> list[dict[str, Any]]:
    """The rows of one split of a build."""
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        raise TunelabError(f"{path}: not found; build the samples with `tunelab behavior build`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_build(folder: Path) -> dict[str, Any]:
    """The build record (behavior.json) of a sample folder."""
    path = folder / BUILD_FILE
    if not path.is_file():
        raise TunelabError(f"{path}: not found; is {folder} a `tunelab behavior build` output?")
    return json.loads(path.read_text(encoding="utf-8"))
