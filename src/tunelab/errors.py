"""The exceptions a user sees: a message they can act on, never a traceback."""


class TunelabError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do.

    The CLI prints ``str(error)`` and exits with ``exit_code``; anything else is a bug and
    keeps its traceback.
    """

    exit_code = 2


class Interrupted(TunelabError):
    """Training stopped by Ctrl-C after saving a checkpoint."""

    exit_code = 130
