"""Stop signals, with real signals: stop after the step, or at once, never mid-update."""

from __future__ import annotations

import signal
import time

import pytest

from tunelab.train import stop
from tunelab.train.stop import stop_signals


def test_a_ctrl_c_asks_to_stop_and_a_later_one_stops_at_once(monkeypatch) -> None:
    monkeypatch.setattr(stop, "SAME_REQUEST_S", 0.2)
    before = {number: signal.getsignal(number) for number in stop.STOP_SIGNALS}
    with stop_signals() as stops:
        assert not stops.requested
        signal.raise_signal(signal.SIGINT)
        assert stops.requested
        # a launcher passing on the terminal's Ctrl-C: the same request, not a second one
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.25)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert {number: signal.getsignal(number) for number in stop.STOP_SIGNALS} == before


def test_sigterm_asks_to_stop_after_the_step_however_often_it_comes(monkeypatch) -> None:
    monkeypatch.setattr(stop, "SAME_REQUEST_S", 0.0)
    with stop_signals() as stops:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        assert stops.requested


def test_a_ctrl_c_during_the_optimizer_update_waits_for_the_end_of_the_step(monkeypatch) -> None:
    monkeypatch.setattr(stop, "SAME_REQUEST_S", 0.0)
    with stop_signals() as stops:
        signal.raise_signal(signal.SIGINT)
        with stops.update():
            signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt halfway through
        assert stops.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
