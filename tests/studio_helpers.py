"""Helpers of the studio's tests: a workspace with a tiny model and data, `tunelab studio` as
a real process on 127.0.0.1, and plain HTTP calls to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tiny_models import save_tiny_qwen3


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fill_workspace(root: Path) -> Path:
    """Data files (one with broken rows) and a tiny model inside the workspace."""
    save_tiny_qwen3(root / "models" / "tiny")
    labels = [
        {"instruction": f"Review {i}: good or bad?", "output": "good" if i % 2 else "bad"}
        for i in range(48)
    ]
    write_rows(root / "data" / "labels.jsonl", labels)
    reviews = [
        {
            "text": ("great " if i % 2 else "awful ") * (1 + i % 3),
            "label": "positive" if (i % 2) ^ (i % 5 == 0) else "negative",  # some noise
        }
        for i in range(40)
    ]
    write_rows(root / "data" / "reviews.jsonl", reviews)
    broken = [*labels[:6], "{not json", {"instruction": "no answer"}, {"output": "no question"}]
    write_rows(root / "data" / "broken.jsonl", broken)
    return root


def train_in(root: Path, settings: dict[str, Any]) -> Path:
    from tunelab.config_file import validate_config
    from tunelab.train.run import train

    base = {"output_dir": str(root / "runs"), "model": str(root / "models" / "tiny")}
    train(validate_config({**base, **settings}, "studio-test"))
    return root / "runs" / settings["name"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(port: int, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    """(status, parsed JSON body) of a request to the studio."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def answers(port: int) -> bool:
    """Whether a server answers on ``port`` (an HTTP error is an answer too)."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@contextmanager
def studio_process(root: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """`tunelab studio --workspace ROOT` on a free port; yields the port once it answers."""
    port = free_port()
    log = (root / f"studio-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "studio", "--workspace", str(root), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (root / f"studio-{port}.log").read_text()
            if answers(port):
                break
            assert time.monotonic() < deadline, "the studio did not come up"
            time.sleep(0.2)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for(condition: Callable[[], Any], timeout: float = 120, what: str = "") -> Any:
    """Poll ``condition`` until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
