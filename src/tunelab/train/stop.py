"""Stopping a run by signal: finish the running step, save a checkpoint, exit.

Ctrl-C (SIGINT) and SIGTERM (what `kill`, schedulers and preemption send) ask the run to stop
after the running step. In a data-parallel run the request is all-reduced after every step,
so every process stops after the same step and they save and exit together, however the
signal reached them. A further SIGINT stops at once, except during the optimizer update,
which is never left half done (the run then stops after this step, a moment later).

Launchers (torchrun, `accelerate launch`) pass a terminal's Ctrl-C on to workers that got it
from the terminal already: a repeat within ``SAME_REQUEST_S`` is taken as the same request.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SAME_REQUEST_S = 1.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """What the signals have asked for so far; ``on_signal`` is their handler."""

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.requested_at: float | None = None
        self.signal_number = signal.SIGINT  # of the first request
        self.updating = False

    @property
    def requested(self) -> bool:
        """A stop after the running step was asked for."""
        return self.requested_at is not None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Record a stop request; raise KeyboardInterrupt for a later Ctrl-C.

        A flag, not an exception, for the first request: an exception raised by a handler
        is dropped when it lands in a finalizer or a weakref callback.
        """
        now = time.monotonic()
        if self.requested_at is None:
            self.requested_at = now
            self.signal_number = signal.Signals(signum)
            if self.announce:
                name = signal.Signals(signum).name
                # os.write, not print: a handler may run in the middle of another write
                os.write(
                    2, f"\n{name}: stopping after this step; Ctrl-C again to stop now\n".encode()
                )
            return
        repeat = now - self.requested_at < SAME_REQUEST_S
        if signum == signal.SIGINT and not repeat and not self.updating:
            raise KeyboardInterrupt

    @contextmanager
    def update(self) -> Iterator[None]:
        """The optimizer update: a Ctrl-C here waits for the end of the step."""
        self.updating = True
        try:
            yield
        finally:
            self.updating = False


@contextmanager
def stop_signals(announce: bool = True) -> Iterator[StopSignals]:
    """SIGINT and SIGTERM handled by a fresh ``StopSignals`` while the block runs.

    ``announce``: say on stderr that a stop was asked for (the main process of several).
    Off the main thread, where Python cannot install handlers, nothing is installed and no
    stop is ever requested.
    """
    stops = StopSignals(announce)
    if threading.current_thread() is not threading.main_thread():
        yield stops
        return
    previous = {number: signal.signal(number, stops.on_signal) for number in STOP_SIGNALS}
    try:
        yield stops
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
