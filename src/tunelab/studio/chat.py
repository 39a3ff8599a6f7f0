"""Chat with a run in the studio, and with its base model on the same prompt.

Models are opened on first use and kept (the last few); one generation runs at a time, since
on a CPU two would only slow each other down. Pieces are handed to the page as they are
decoded, through a queue the request's event stream reads.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from tunelab.errors import TunelabError
from tunelab.run_dir import RunDir

KEPT_MODELS = 2
MAX_NEW_TOKENS = 512


class ChatModels:
    """Opened runs (adapter or base alone), the least recently used dropped first."""

    def __init__(self) -> None:
        self.opened: OrderedDict[tuple[str, bool], Any] = OrderedDict()
        self.generating = threading.Lock()

    def get(self, run: RunDir, base: bool) -> Any:
        from tunelab.use.open import open_run

        key = (str(run.root), base)
        if key not in self.opened:
            while len(self.opened) >= KEPT_MODELS:
                self.opened.popitem(last=False)
            self.opened[key] = open_run(run.root, base_only=base)
        self.opened.move_to_end(key)
        return self.opened[key]

    def forget(self, run: RunDir) -> None:
        """Drop a run's models (it was retrained or deleted)."""
        for key in [k for k in self.opened if k[0] == str(run.root)]:
            del self.opened[key]


async def chat_events(
    models: ChatModels, run: RunDir, messages: list[dict[str, str]], base: bool, max_new: int
) -> AsyncIterator[str]:
    """Server-sent events: ``piece`` for each decoded piece, then ``done`` (or ``error``)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(kind: str, value: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def work() -> None:
        try:
            with models.generating:
                opened = models.get(run, base)
                if opened.labels:
                    put("classes", opened.classify([messages[-1]["content"]])[0])
                else:
                    for piece in opened.stream(messages, min(max_new, MAX_NEW_TOKENS)):
                        put("piece", piece)
            put("done", None)
        except TunelabError as error:
            put("error", str(error))
        except Exception as error:
            put("error", f"{type(error).__name__}: {error}")

    threading.Thread(target=work, daemon=True).start()
    while True:
        kind, value = await queue.get()
        yield f"event: {kind}\ndata: {json.dumps(value, ensure_ascii=False)}\n\n"
        if kind in ("done", "error"):
            return
