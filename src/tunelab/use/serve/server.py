"""Running `tunelab serve`: safe binding rules, uvicorn, and a shutdown that drains.

SIGTERM (or Ctrl-C) stops admitting requests (503), lets the requests in flight finish, then
exits 0; a second signal stops at once.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console

from tunelab.errors import TunelabError
from tunelab.use.serve.app import create_app
from tunelab.use.serve.models import load_models, parse_names
from tunelab.use.serve.state import Settings

API_KEY_VARIABLE = "TUNELAB_API_KEY"
DRAIN_TIMEOUT_S = 120.0


def serve(
    runs: list[Path],
    aliases: list[str],
    host: str,
    port: int,
    cors_origins: list[str],
    limits: tuple[int, int, int],
    console: Console,
) -> None:
    """Serve ``runs`` (and their base models) until a signal says stop.

    ``limits``: the largest batch, the longest queue, the largest body in MiB.
    """
    settings = Settings(_api_key(host), cors_origins, limits[2] * 2**20)
    named = parse_names(runs, aliases)
    served = load_models(named, max_batch=limits[0], max_queue=limits[1])
    app = create_app(served, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = DrainingServer(config, app.state.tunelab)
    console.print(f"serving {', '.join(served)} on http://{host}:{port}/v1")
    server.run()
    for one in served.values():
        if one.engine is not None:
            one.engine.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first stop signal drains instead of dropping requests."""

    def __init__(self, config: uvicorn.Config, state: Any) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        """First signal: refuse new requests, finish the running ones; second: stop now."""
        if self.state.draining:
            super().handle_exit(sig, frame)
            return
        self.state.draining = True
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.state.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.should_exit = True


def _api_key(host: str) -> str | None:
    """The key from the environment; required when the server listens beyond this machine."""
    return secret_for_host(
        API_KEY_VARIABLE, host, "an API key first (clients send it as `Authorization: Bearer KEY`)"
    )


def secret_for_host(variable: str, host: str, what: str) -> str | None:
    """The secret in ``variable``; an error saying to set it (``what``) when ``host`` listens
    beyond this machine and it is not set."""
    secret = os.environ.get(variable) or None
    if secret is None and not loopback(host):
        raise TunelabError(f"--host {host} listens beyond this machine: set {variable} to {what}")
    return secret


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
