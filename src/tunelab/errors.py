"""The exceptions a user sees: a message they can act on, never a traceback."""

import signal


class TunelabError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do.

    The CLI prints ``str(error)`` and exits with ``exit_code``; anything else is a bug and
    keeps its traceback.
    """

    exit_code = 2


class Interrupted(TunelabError):
    """Training stopped by a signal after saving a checkpoint.

    It exits as a shell reports a process ended by that signal: 130 for Ctrl-C (SIGINT),
    143 for SIGTERM.
    """

    def __init__(self, message: str, signal_number: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number
