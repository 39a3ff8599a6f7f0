"""Activity events and the sources they come from.

An event is a time, an action, a target and optional details. Sources: the text log users
keep (one Chinese-worded event per line), CSV/JSONL event tables with named columns, and
ActivityWatch (its bucket export JSON and a running aw-server's REST API). Lines that do not
parse are returned as rejects with their line numbers, never dropped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.data.readers import Reject, Source, read_rows
from tunelab.errors import TunelabError

FIELD_SEPARATOR = " | "
# Actions whose target is itself an application (the dispatch simulation preloads apps).
APP_ACTIONS = ("启动应用", "关闭应用", "使用应用")


@dataclass(frozen=True)
class Event:
    """One thing a user did."""

    time: datetime
    action: str
    target: str
    details: str = ""
    user: str = "default"
    app: str | None = None  # the application the event belongs to, when known

    @property
    def key(self) -> str:
        """Action and target: what a partial match must get right."""
        return f"{_clean(self.action)}{FIELD_SEPARATOR}{_clean(self.target)}"

    @property
    def answer(self) -> str:
        """The event as a model writes it: `action | target` and ` | details` when present."""
        return self.key + (f"{FIELD_SEPARATOR}{_clean(self.details)}" if self.details else "")


def _clean(text: str) -> str:
    # the separator and line breaks inside a field would make the answer ambiguous
    return " ".join(text.replace("|", "/").split())


@dataclass
class EventLog:
    """Events in time order per user, and the lines that could not be read."""

    events: list[Event] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    read: int = 0
    notes: list[str] = field(default_factory=list)  # how values were read (time units)

    def extend(self, other: EventLog) -> None:
        """Add another source's events and rejects."""
        self.events.extend(other.events)
        self.rejects.extend(other.rejects)
        self.read += other.read
        self.notes.extend(other.notes)

    def sorted(self) -> EventLog:
        """Events ordered by user, then time (stable for equal times)."""
        ordered = sorted(self.events, key=lambda e: (e.user, e.time))
        return EventLog(ordered, self.rejects, self.read, self.notes)


# --- the text log -------------------------------------------------------------------------

_LINE = re.compile(r"^(?P<time>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) - (?P<body>.+)$")
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("启动应用", re.compile(r"^启动应用: (?P<target>.+)$")),
    ("关闭应用", re.compile(r"^关闭应用: (?P<target>.+)$")),
    ("切换到窗口", re.compile(r"^切换到窗口: (?P<target>.*) \(应用: (?P<app>[^()]+)\)$")),
    ("访问网站", re.compile(r"^访问网站 (?P<target>\S+) 的页面 '(?P<page>.*)'$")),
    ("访问文件", re.compile(r"^访问文件: (?P<target>.+?) \(位于 (?P<folder>.+)\)$")),
    ("使用应用", re.compile(r"^使用应用: (?P<target>.+?) \(时长: (?P<seconds>[\d.]+)秒\)$")),
)
ACTIONS = tuple(action for action, _ in _PATTERNS)


def parse_line(line: str, user: str = "default") -> Event:
    """One line of the text log as an event.

    Raises:
        ValueError: with what was expected, when the line is not one of the six kinds.
    """
    match = _LINE.match(line.strip())
    if not match:
        raise ValueError("expected 'YYYY-MM-DD HH:MM:SS - <action>...'")
    when = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S")
    body = match["body"].strip()
    for action, pattern in _PATTERNS:
        found = pattern.match(body)
        if found:
            return _text_event(action, found.groupdict(), when, user)
    known = "、".join(ACTIONS)
    raise ValueError(f"unknown or malformed action {body[:40]!r}; expected one of {known}")


def _text_event(action: str, parts: dict[str, str], when: datetime, user: str) -> Event:
    target = parts["target"].strip()
    if action == "切换到窗口":
        return Event(when, action, target, f"应用: {parts['app']}", user, parts["app"])
    if action == "访问网站":
        return Event(when, action, target, f"页面: {parts['page']}", user)
    if action == "访问文件":
        return Event(when, action, target, f"位于: {parts['folder']}", user)
    if action == "使用应用":
        return Event(when, action, target, f"时长: {parts['seconds']}秒", user, target)
    return Event(when, action, target, "", user, target)


def read_text_log(path: Path, user: str | None = None) -> EventLog:
    """A text log file; the user is the file's stem unless given."""
    who = user or path.stem
    log = EventLog()
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        log.read += 1
        try:
            log.events.append(parse_line(line, who))
        except ValueError as error:
            log.rejects.append(Reject(Source(str(path), line=number), "line", str(error)))
    return log


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise TunelabError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None


# --- event tables ------------------------------------------------------------------------


@dataclass(frozen=True)
class EventColumns:
    """Which columns of an event table hold what."""

    time: str = "time"
    action: str = "action"
    target: str = "target"
    details: str | None = "details"
    user: str | None = "user"
    app: str | None = None


def read_event_table(path: Path, columns: EventColumns) -> EventLog:
    """A CSV / JSONL / JSON / XLSX table with one event per row."""
    raw = read_rows(path)
    log = EventLog(rejects=list(raw.rejects), read=len(raw.rows) + len(raw.rejects))
    units: set[str] = set()
    for row in raw.rows:
        try:
            log.events.append(_table_event(row.data, columns, units))
        except ValueError as error:
            field_name, reason = error.args
            log.rejects.append(Reject(row.source, field_name, reason))
    log.notes += [f"{path}: column {columns.time!r} read as Unix epoch {u}" for u in sorted(units)]
    return log


def _table_event(data: dict[str, Any], columns: EventColumns, units: set[str]) -> Event:
    value = data.get(columns.time)
    unit = epoch_unit(value)
    if unit:
        units.add(unit)
    when = parse_time(value, columns.time)
    action, target = (_required(data, name) for name in (columns.action, columns.target))
    details = str(data.get(columns.details) or "").strip() if columns.details else ""
    user = str(data.get(columns.user) or "default").strip() if columns.user else "default"
    app = str(data.get(columns.app) or "").strip() or None if columns.app else None
    if columns.app is None and action in APP_ACTIONS:
        app = target
    return Event(when, action, target, details, user, app)


def _required(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None or not str(value).strip():
        raise ValueError(name, f"missing {name!r}")
    return str(value).strip()


def epoch_unit(value: Any) -> str | None:
    """`seconds` or `milliseconds` for a Unix epoch time (a number, or digits in text), else
    None: 12 digits and more are milliseconds (seconds would be after the year 5000).

    >>> epoch_unit("1260759108"), epoch_unit(1260759108000), epoch_unit("2025-05-27")
    ('seconds', 'milliseconds', None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        digits = len(str(int(abs(value))))
    elif isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        digits = len(value.strip().split(".")[0])
    else:
        return None
    return "milliseconds" if digits >= 12 else "seconds"


def parse_time(value: Any, name: str = "time") -> datetime:
    """An ISO time text, a datetime, or Unix epoch seconds or milliseconds (numbers or digits),
    as a naive datetime (UTC if zoned)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    unit = epoch_unit(value)
    if unit:
        seconds = float(value) / (1000 if unit == "milliseconds" else 1)
        return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)
    text = str(value or "").strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            name, f"expected an ISO time like 2025-05-27 20:58:33, got {text!r}"
        ) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


# --- ActivityWatch ------------------------------------------------------------------------


def read_activitywatch_export(path: Path) -> EventLog:
    """An ActivityWatch export (`/api/0/export` or one bucket's export) as events."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TunelabError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    buckets = document.get("buckets", document) if isinstance(document, dict) else None
    if not isinstance(buckets, dict):
        raise TunelabError(f"{path}: expected an ActivityWatch export with a 'buckets' object")
    log = EventLog()
    for bucket_id, bucket in buckets.items():
        log.extend(activitywatch_bucket_events(bucket_id, bucket, str(path)))
    return log


def activitywatch_bucket_events(bucket_id: str, bucket: dict[str, Any], origin: str) -> EventLog:
    """The events of one bucket: window buckets give window switches, web buckets site visits,
    afk buckets are skipped (they say whether the user was there, not what they did)."""
    kind = str(bucket.get("type", ""))
    user = str(bucket.get("hostname") or bucket.get("client") or "default")
    log = EventLog()
    if kind.startswith("afkstatus"):
        return log
    for number, raw in enumerate(bucket.get("events", []), start=1):
        log.read += 1
        source = Source(f"{origin}#{bucket_id}", row=number)
        try:
            log.events.append(_activitywatch_event(raw, kind, user))
        except ValueError as error:
            field_name, reason = error.args
            log.rejects.append(Reject(source, field_name, reason))
    return log


def _activitywatch_event(raw: dict[str, Any], kind: str, user: str) -> Event:
    when = parse_time(raw.get("timestamp"), "timestamp")
    data = raw.get("data") or {}
    seconds = float(raw.get("duration") or 0.0)
    if kind.startswith("web.tab") or "url" in data:
        url = str(data.get("url") or "")
        site = re.sub(r"^[a-z]+://", "", url).split("/")[0]
        if not site:
            raise ValueError("data.url", "web event without a url")
        return Event(when, "访问网站", site, f"页面: {data.get('title', '')}", user)
    app = str(data.get("app") or "").strip()
    if not app:
        raise ValueError("data.app", "window event without an app")
    title = str(data.get("title") or "").strip()
    if title:
        return Event(when, "切换到窗口", title, f"应用: {app}", user, app)
    return Event(when, "使用应用", app, f"时长: {seconds:.2f}秒", user, app)


def fetch_activitywatch(
    url: str, buckets: Sequence[str] | None = None, limit: int = -1
) -> EventLog:
    """Events from a running aw-server's REST API (`/api/0/buckets/<id>/events`)."""
    import urllib.error
    import urllib.request

    base = url.rstrip("/")

    def get(path: str) -> Any:
        try:
            with urllib.request.urlopen(f"{base}{path}", timeout=30) as answer:
                return json.loads(answer.read().decode("utf-8"))
        except (urllib.error.URLError, OSError) as error:
            raise TunelabError(f"cannot reach ActivityWatch at {base}: {error}") from None

    listing = get("/api/0/buckets/")
    chosen = list(buckets) if buckets else sorted(listing)
    log = EventLog()
    for bucket_id in chosen:
        if bucket_id not in listing:
            raise TunelabError(f"{base}: no bucket {bucket_id!r}; it has {sorted(listing)}")
        bucket = dict(listing[bucket_id])
        bucket["events"] = get(f"/api/0/buckets/{bucket_id}/events?limit={limit}")
        log.extend(activitywatch_bucket_events(bucket_id, bucket, base))
    return log


# --- any file ----------------------------------------------------------------------------


def read_events(paths: Iterable[Path], columns: EventColumns | None = None) -> EventLog:
    """Events from files of any supported kind, by extension and content."""
    log = EventLog()
    for path in map(Path, paths):
        if not path.is_file():
            raise TunelabError(f"{path}: event file not found")
        log.extend(_read_one(path, columns or EventColumns()))
    return log.sorted()


def _read_one(path: Path, columns: EventColumns) -> EventLog:
    suffix = path.suffix.lower()
    if suffix in (".log", ".txt"):
        return read_text_log(path)
    if suffix == ".json" and _looks_like_activitywatch(path):
        return read_activitywatch_export(path)
    if suffix in (".csv", ".jsonl", ".json", ".xlsx"):
        return read_event_table(path, columns)
    raise TunelabError(
        f"{path}: unknown event file kind {suffix!r}; expected .log/.txt (text log), "
        ".csv/.jsonl/.json/.xlsx (event table) or an ActivityWatch export .json"
    )


def _looks_like_activitywatch(path: Path) -> bool:
    head = path.read_text(encoding="utf-8", errors="replace")[:4096]
    return '"buckets"' in head or ('"events"' in head and '"type"' in head)
