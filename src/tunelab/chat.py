"""`tunelab chat`: talk to a fine-tuned (or base) model in the terminal, answers streamed.

Commands: /reset clears the history, /system TEXT sets the system message, /exit leaves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tunelab.data.encode import encode_prompt
from tunelab.data.formats import Message

HELP = "commands: /reset (forget the conversation), /system TEXT, /exit"


class ChatSession:
    """A conversation: history, system message, and one streamed reply per user turn."""

    def __init__(
        self, model: Any, tokenizer: Any, max_new_tokens: int = 256, thinking: bool = False
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.thinking = thinking
        self.system: str | None = None
        self.history: list[Message] = []

    def messages(self) -> list[Message]:
        """The chat as the template sees it."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history]

    def reply(self, text: str, on_piece: Callable[[str], None]) -> str:
        """Generate the answer to ``text``, passing each decoded piece to ``on_piece``."""
        import torch
        from transformers import TextIteratorStreamer

        self.history.append({"role": "user", "content": text})
        ids = torch.tensor([encode_prompt(self.tokenizer, self.messages(), self.thinking)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        arguments = {
            "input_ids": ids.to(next(self.model.parameters()).device),
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": self.max_new_tokens,
            "do_sample": False,
            "streamer": streamer,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        worker = threading.Thread(target=self._generate, kwargs=arguments)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            on_piece(piece)
        worker.join()
        answer = "".join(pieces).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def _generate(self, **arguments: Any) -> None:
        import torch

        with torch.no_grad():
            self.model.generate(**arguments)

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
    session: ChatSession, read: Callable[[str], str], write: Callable[[str], None]
) -> None:
    """Read a line, answer it, until /exit or end of input."""
    write(f"{HELP}\n")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            shown = session.command(line)
            if shown is None:
                return
            write(shown + "\n")
            continue
        write("model> ")
        session.reply(line, write)
        write("\n")
