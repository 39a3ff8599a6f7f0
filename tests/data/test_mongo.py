"""MongoDB pulls against a real MongoDB-wire server (SecantusDB) on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

pymongo = pytest.importorskip("pymongo")

from tunelab.data.mongo import connect, pull_per_label  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mongo_uri() -> Iterator[str]:
    server = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            ":memory:",
            "--standalone",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            pymongo.MongoClient(uri, serverSelectionTimeoutMS=500).admin.command("ping")
            break
        except pymongo.errors.PyMongoError:
            assert process.poll() is None, "the MongoDB-wire server exited"
            assert time.monotonic() < deadline, "the MongoDB-wire server did not start"
            time.sleep(0.3)
    client = pymongo.MongoClient(uri)
    labels = ["正常"] * 6 + ["政治安全"] * 3 + ["色情"]
    client.moderation.posts.insert_many(
        [{"text_cn": f"帖子{i}", "n_labels": labels[i % 10], "views": i} for i in range(200)]
    )
    client.moderation.posts.insert_one({"n_labels": "广告", "views": 1})
    yield uri
    process.terminate()
    process.wait(timeout=30)


def test_per_label_sampling_in_the_database(mongo_uri: str) -> None:
    client = connect(mongo_uri)
    quotas = {"正常": 30, "政治安全": 10, "色情": 5}
    rows = pull_per_label(
        client, "moderation", "posts", ["text_cn", "n_labels"], "n_labels", quotas, seed=123
    )
    assert Counter(r["n_labels"] for r in rows) == quotas
    assert all(set(r) == {"_id", "text_cn", "n_labels"} for r in rows)
    exact = pull_per_label(
        client,
        "moderation",
        "posts",
        ["text_cn", "n_labels"],
        "n_labels",
        quotas,
        123,
        exact_seed=True,
    )
    again = pull_per_label(
        client,
        "moderation",
        "posts",
        ["text_cn", "n_labels"],
        "n_labels",
        quotas,
        123,
        exact_seed=True,
    )
    assert [r["_id"] for r in exact] == [r["_id"] for r in again]
    assert Counter(r["n_labels"] for r in exact) == quotas


def test_missing_field_and_short_label_are_clear_errors(mongo_uri: str) -> None:
    client = connect(mongo_uri)
    with pytest.raises(
        TunelabError, match=r"moderation.posts: document \S+ has no field 'text_cn'"
    ):
        pull_per_label(
            client, "moderation", "posts", ["text_cn", "n_labels"], "n_labels", {"广告": 1}, 1
        )
    with pytest.raises(TunelabError, match=r"only 20 documents with n_labels='色情', 21 asked for"):
        pull_per_label(client, "moderation", "posts", ["text_cn"], "n_labels", {"色情": 21}, 1)


def test_cli_writes_the_sample_and_reads_credentials_from_the_environment(
    mongo_uri: str, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    command = [
        sys.executable,
        "-m",
        "tunelab",
        "data",
        "pull-mongo",
        "--db",
        "moderation",
        "--collection",
        "posts",
        "--fields",
        "text_cn,n_labels",
        "--labels",
        "正常:4,色情:2",
        "--seed",
        "123",
        "--output",
        str(output),
    ]
    env = {"MONGODB_URI": mongo_uri, "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len([json.loads(line) for line in output.read_text().splitlines()]) == 6


def test_unreachable_server_is_a_clear_error_and_hides_the_password() -> None:
    uri = f"mongodb://ann:s3cret@127.0.0.1:{free_port()}/"
    with pytest.raises(
        TunelabError, match=r"cannot reach MongoDB at mongodb://ann:\*\*\*@127.0.0.1"
    ) as caught:
        connect(uri, timeout_ms=300)
    assert "s3cret" not in str(caught.value)
