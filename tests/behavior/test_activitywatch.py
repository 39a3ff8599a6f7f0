"""A real aw-server on 127.0.0.1, fed by aw-client, read through its REST API and export."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tunelab.behavior.events import fetch_activitywatch, read_events

pytest.importorskip("aw_client", reason="the dev extra installs aw-server and aw-client")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def aw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    home = tmp_path_factory.mktemp("aw-home")
    port = free_port()
    binary = shutil.which("aw-server") or str(Path(sys.executable).parent / "aw-server")
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    server = subprocess.Popen(
        [binary, "--testing", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/api/0/info", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("aw-server did not start within 20 s")
        yield url, port
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_events_from_a_running_server_and_its_export(
    aw_server: tuple[str, int], tmp_path: Path
) -> None:
    from aw_client import ActivityWatchClient
    from aw_core.models import Event as AwEvent

    url, port = aw_server
    client = ActivityWatchClient("tunelab-test", testing=True, host="127.0.0.1", port=port)
    bucket = "aw-watcher-window_testhost"
    client.create_bucket(bucket, event_type="currentwindow")
    start = datetime(2025, 5, 27, 12, 0, tzinfo=timezone.utc)
    windows = [
        ("Code.exe", "main.py - Visual Studio Code"),
        ("msedge.exe", "GitHub"),
        ("Code.exe", "train.py - Visual Studio Code"),
    ]
    client.insert_events(
        bucket,
        [
            AwEvent(
                timestamp=start + timedelta(minutes=i), duration=30, data={"app": a, "title": t}
            )
            for i, (a, t) in enumerate(windows)
        ],
    )
    live = fetch_activitywatch(url, [bucket])
    ordered = live.sorted().events
    assert [(e.action, e.target, e.app) for e in ordered] == [
        ("切换到窗口", t, a) for a, t in windows
    ]
    assert ordered[0].time == datetime(2025, 5, 27, 12, 0)
    export = urllib.request.urlopen(f"{url}/api/0/export", timeout=10).read()
    path = tmp_path / "aw-buckets-export.json"
    path.write_bytes(export)
    from_file = read_events([path])
    assert [e.target for e in from_file.events] == [t for _, t in windows]
    assert json.loads(export)["buckets"][bucket]["type"] == "currentwindow"
