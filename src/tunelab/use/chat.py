"""`tunelab chat`: talk to a fine-tuned (or base) model in the terminal, answers streamed.

Commands: /reset clears the history, /system TEXT sets the system message, /exit leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.data.formats import Message

HELP = "commands: /reset (forget the conversation), /system TEXT, /exit"


class ChatSession:
    """A conversation: history, system message, and one streamed reply per user turn."""

    def __init__(self, run: Any, max_new_tokens: int = 256, remember: bool = True) -> None:
        self.run = run  # an OpenedRun
        self.max_new_tokens = max_new_tokens
        self.remember = remember  # False: each message alone, as test cases are
        self.system: str | None = None
        self.history: list[Message] = []

    def messages(self) -> list[Message]:
        """The chat as the template sees it."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history]

    def reply(self, text: str, on_piece: Callable[[str], None]) -> str:
        """Generate the answer to ``text``, passing each decoded piece to ``on_piece``."""
        if not self.remember:
            self.history.clear()
        self.history.append({"role": "user", "content": text})
        pieces = []
        for piece in self.run.stream(self.messages(), self.max_new_tokens):
            pieces.append(piece)
            on_piece(piece)
        answer = "".join(pieces).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def command(self, line: str) -> str | None:
        """Apply a /command; returns what to show, or None for /exit."""
        name, _, rest = line.partition(" ")
        if name == "/exit":
            return None
        if name == "/reset":
            self.history.clear()
            return "(history cleared)"
        if name == "/system":
            self.system = rest.strip() or None
            self.history.clear()
            return f"(system message {'set' if self.system else 'removed'}; history cleared)"
        return HELP


def run_repl(
    session: ChatSession,
    read: Callable[[str], str],
    write: Callable[[str], None],
    multiline: bool = False,
) -> None:
    """Read a message, answer it, until /exit or end of input.

    ``multiline``: a message is every line up to an empty line, so a test prompt with line
    breaks is sent as it is written.
    """
    write(f"{HELP}\n")
    while True:
        try:
            text = _read_message(read, multiline)
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not text:
            continue
        if text.startswith("/"):
            shown = session.command(text)
            if shown is None:
                return
            write(shown + "\n")
            continue
        write("model> ")
        session.reply(text, write)
        write("\n")


def _read_message(read: Callable[[str], str], multiline: bool) -> str:
    first = read("you> ").strip()
    if not multiline or not first or first.startswith("/"):
        return first
    lines = [first]
    while line := read("...  ").rstrip():
        lines.append(line)
    return "\n".join(lines)
