"""Samples from logs: sessions, history windows, a time-ordered split that never leaks."""

from __future__ import annotations

from datetime import datetime, timedelta

from tunelab.behavior.events import Event, EventLog
from tunelab.behavior.samples import BuildOptions, build_samples, render_answer, sessions


def event(user: str, minute: int, target: str) -> Event:
    when = datetime(2025, 1, 1) + timedelta(minutes=minute)
    return Event(when, "启动应用", target, "", user, target)


def make_log() -> EventLog:
    events = [event("a", 10 * i, f"app{i % 3}") for i in range(30)]
    events += [event("b", 10 * i + 5, f"app{i % 4}") for i in range(30)]
    events.insert(10, event("a", 10_000, "late"))  # far after a's other events
    return EventLog(events, [], len(events)).sorted()


def test_sessions_split_at_users_and_gaps() -> None:
    cut = sessions(make_log().events, gap_minutes=60)
    assert [(s[0].user, len(s)) for s in cut] == [("a", 30), ("a", 1), ("b", 30)]


def test_split_is_in_time_order_and_history_never_reaches_the_target() -> None:
    options = BuildOptions(window=3, session_gap_minutes=60, split=(0.6, 0.2, 0.2))
    parts, record = build_samples(make_log(), options)
    first, second = (datetime.fromisoformat(p) for p in record["split_points"])
    assert all(s.next.time < first for s in parts["train"])
    assert all(first <= s.next.time < second for s in parts["val"])
    assert all(s.next.time >= second for s in parts["test"])
    for part in parts.values():
        for sample in part:
            assert len(sample.history) <= 3
            assert all(
                h.time <= sample.next.time and h.user == sample.next.user for h in sample.history
            )
    # 29 + 29 samples (the lone late event of user a has no history in its session)
    assert sum(record["samples"].values()) == 58
    assert set(record["vocabulary"]["actions"]["启动应用"]) <= {f"app{i}" for i in range(4)}


def test_caps_keep_each_users_test_events_consecutive_and_report_what_they_left_out() -> None:
    options = BuildOptions(window=2, session_gap_minutes=60, split=(0.5, 0.1, 0.4))
    whole, _ = build_samples(make_log(), options)
    capped = BuildOptions(**{**options.__dict__, "max_samples": {"test": 5, "train": 10}})
    parts, record = build_samples(make_log(), capped)
    assert len(parts["train"]) == 10 and len(parts["test"]) == 5
    for user in {s.next.user for s in parts["test"]}:
        kept = [s.next.time for s in parts["test"] if s.next.user == user]
        every = [s.next.time for s in whole["test"] if s.next.user == user]
        assert kept == every[: len(kept)]  # the user's first held-out events, none skipped
    assert record["left_out_by_caps"]["train"] > 0
    assert record["left_out_by_caps"]["test"] > 0


def test_rows_render_prompt_answer_and_delay() -> None:
    log = make_log()
    last, nxt = log.events[0], log.events[1]
    assert render_answer(nxt, last, predict_time=True) == "启动应用 | app1 @ +10m"
    parts, _ = build_samples(log, BuildOptions(window=2, session_gap_minutes=60))
    row = parts["train"][0].row(BuildOptions())
    assert row["output"] == row["key"] and row["app"] == row["key"].split(" | ")[1]
    assert row["instruction"].count("\n") == len(row["recent"]) + 1
