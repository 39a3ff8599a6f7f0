"""`tunelab serve` as a real server process on 127.0.0.1, used with the official openai client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI, RateLimitError

KEY = "secret-test-key"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def server(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[int, Any]]:
    """A `tunelab serve` process; yields (port, process) once /health answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "serve", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 240
        while not healthy(port):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        yield port, process
    finally:
        with suppress(ProcessLookupError):
            process.kill()
        process.wait()


def healthy(port: int) -> bool:
    try:
        status, _ = call(port, "GET", "/health")
    except OSError:
        return False
    return status == 200


def call(
    port: int, method: str, path: str, body: Any = None, headers: dict | None = None
) -> tuple[int, Any]:
    """A raw HTTP call: (status, parsed JSON or text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    connection.request(method, path, body=data, headers=sent)
    response = connection.getresponse()
    text = response.read().decode("utf-8", "replace")
    connection.close()
    try:
        return response.status, json.loads(text)
    except json.JSONDecodeError:
        return response.status, text


@pytest.fixture(scope="module")
def served(tiny_run: Path, class_run: Path) -> Iterator[int]:
    with server(str(tiny_run), str(class_run), "--name", f"sentiment={class_run}") as (port, _):
        yield port


def client(port: int, key: str = "none") -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


def test_models_are_listed_with_their_provenance(served: int, tiny_run: Path) -> None:
    import yaml

    base = yaml.safe_load((tiny_run / "config.yaml").read_text())["model"]["name"]
    models = {m.id: m for m in client(served).models.list().data}
    assert set(models) == {"labels", "sentiment", base}  # the runs by name, and their base
    info = models["labels"].model_extra["tunelab"]
    assert info["task"] == "sft" and info["steps"] == 4 and len(info["training_data"]) == 64
    assert models["sentiment"].model_extra["tunelab"]["task"] == "classify"


def test_chat_stream_and_completions_with_the_real_client(served: int) -> None:
    api = client(served)
    chat = [{"role": "user", "content": "评论 5：好还是坏？"}]
    whole = api.chat.completions.create(
        model="labels", messages=chat, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3
    )
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 5
    assert whole.usage.completion_tokens == len(choice.logprobs.content) >= 1
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in choice.logprobs.content)
    chunks = list(
        api.chat.completions.create(
            model="labels",
            messages=chat,
            temperature=0,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    several = api.chat.completions.create(
        model="labels", messages=chat, n=3, temperature=1.0, seed=7, max_tokens=4
    )
    assert [c.index for c in several.choices] == [0, 1, 2]
    text = api.completions.create(
        model="labels", prompt=["评论", "好"], max_tokens=3, temperature=0
    )
    assert len(text.choices) == 2 and text.usage.completion_tokens >= 2


def test_a_json_schema_answer_always_parses_and_validates(served: int) -> None:
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"positive": {"type": "boolean"}},
        "required": ["positive"],
        "additionalProperties": False,
    }
    answer = client(served).chat.completions.create(
        model="labels",
        messages=[{"role": "user", "content": "评论 1：好还是坏？ Answer in JSON."}],
        temperature=0.8,
        seed=3,
        max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)
    label = client(served).chat.completions.create(
        model="labels",
        messages=[{"role": "user", "content": "?"}],
        max_tokens=5,
        response_format={"type": "choice", "choices": ["好", "坏"]},
    )
    assert label.choices[0].message.content in ("好", "坏")


def test_a_class_head_classifies_as_predict_does(served: int, class_run: Path, tmp_path) -> None:
    from tunelab.use.predict import predict_file

    texts = ["很好 很好", "很差", "一般般"]
    status, body = call(served, "POST", "/v1/classify", {"model": "sentiment", "input": texts})
    assert status == 200, body
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    predict_file(class_run, source, tmp_path / "out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    for row, answer in zip(rows, body["data"], strict=True):
        assert row["prediction"] == answer["label"]
        assert row["p_正面"] == round(answer["probabilities"]["正面"], 4)
    assert body["usage"]["prompt_tokens"] > 0


MALFORMED: list[tuple[str, str, Any, int]] = [
    ("bad JSON", "/v1/chat/completions", b"{not json", 400),
    ("a list body", "/v1/chat/completions", [1, 2], 400),
    ("a string body", "/v1/chat/completions", "hello", 400),
    ("no model", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 400),
    ("unknown model", "/v1/chat/completions", {"model": "nope", "messages": []}, 400),
    (
        "unknown model, valid",
        "/v1/chat/completions",
        {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        404,
    ),
    ("no messages", "/v1/chat/completions", {"model": "labels"}, 400),
    ("empty messages", "/v1/chat/completions", {"model": "labels", "messages": []}, 400),
    (
        "unknown role",
        "/v1/chat/completions",
        {"model": "labels", "messages": [{"role": "robot", "content": "x"}]},
        400,
    ),
    (
        "content a number",
        "/v1/chat/completions",
        {"model": "labels", "messages": [{"role": "user", "content": 5}]},
        400,
    ),
    (
        "image part",
        "/v1/chat/completions",
        {
            "model": "labels",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        400,
    ),
    (
        "ends with assistant",
        "/v1/chat/completions",
        {"model": "labels", "messages": [{"role": "assistant", "content": "x"}]},
        400,
    ),
    (
        "n=0",
        "/v1/chat/completions",
        {"model": "labels", "n": 0, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "n=1000",
        "/v1/chat/completions",
        {"model": "labels", "n": 1000, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "negative max_tokens",
        "/v1/chat/completions",
        {"model": "labels", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "max_tokens a string",
        "/v1/chat/completions",
        {"model": "labels", "max_tokens": "5", "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "temperature 5",
        "/v1/chat/completions",
        {"model": "labels", "temperature": 5, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "top_p 0",
        "/v1/chat/completions",
        {"model": "labels", "top_p": 0, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "top_logprobs 50",
        "/v1/chat/completions",
        {
            "model": "labels",
            "logprobs": True,
            "top_logprobs": 50,
            "messages": [{"role": "user", "content": "x"}],
        },
        400,
    ),
    (
        "top_logprobs without logprobs",
        "/v1/chat/completions",
        {"model": "labels", "top_logprobs": 2, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "tools",
        "/v1/chat/completions",
        {
            "model": "labels",
            "tools": [{"type": "function"}],
            "messages": [{"role": "user", "content": "x"}],
        },
        400,
    ),
    (
        "frequency penalty",
        "/v1/chat/completions",
        {"model": "labels", "frequency_penalty": 1, "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "five stops",
        "/v1/chat/completions",
        {"model": "labels", "stop": list("abcde"), "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "invalid schema",
        "/v1/chat/completions",
        {
            "model": "labels",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
            "messages": [{"role": "user", "content": "x"}],
        },
        400,
    ),
    (
        "uncompilable schema",
        "/v1/chat/completions",
        {
            "model": "labels",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            },
            "messages": [{"role": "user", "content": "x"}],
        },
        400,
    ),
    (
        "unknown response format",
        "/v1/chat/completions",
        {
            "model": "labels",
            "response_format": {"type": "xml"},
            "messages": [{"role": "user", "content": "x"}],
        },
        400,
    ),
    (
        "choice without choices",
        "/v1/chat/completions",
        {
            "model": "labels",
            "response_format": {"type": "choice"},
            "messages": [{"role": "user", "content": "x"}],
        },
        400,
    ),
    (
        "chat to a class head",
        "/v1/chat/completions",
        {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "stream a string",
        "/v1/chat/completions",
        {"model": "labels", "stream": "yes", "messages": [{"role": "user", "content": "x"}]},
        400,
    ),
    (
        "prompt too long",
        "/v1/chat/completions",
        {"model": "labels", "messages": [{"role": "user", "content": "好 " * 120000}]},
        400,
    ),
    ("completion without prompt", "/v1/completions", {"model": "labels"}, 400),
    ("completion empty prompt list", "/v1/completions", {"model": "labels", "prompt": []}, 400),
    ("completion echo", "/v1/completions", {"model": "labels", "prompt": "x", "echo": True}, 400),
    ("classify a generator", "/v1/classify", {"model": "labels", "input": ["x"]}, 400),
    ("classify nothing", "/v1/classify", {"model": "sentiment", "input": []}, 400),
    ("classify numbers", "/v1/classify", {"model": "sentiment", "input": [1, 2]}, 400),
    ("a 10 MB body", "/v1/chat/completions", b"{" + b" " * (10 * 2**20) + b"}", 413),
    ("unknown path", "/v1/engines", {"x": 1}, 404),
]


def test_every_malformed_request_is_a_4xx_with_a_message(served: int) -> None:
    assert len(MALFORMED) >= 30
    for name, path, body, expected in MALFORMED:
        headers = {"Content-Type": "application/json"}
        status, answer = call(served, "POST", path, body, headers)
        assert status == expected, (name, status, answer)
        assert isinstance(answer, dict) and answer["error"]["message"], (name, answer)
    assert healthy(served)
    status, text = call(served, "GET", "/metrics")
    assert (
        status == 200 and 'tunelab_requests_total{path="/v1/chat/completions",status="400"}' in text
    )


def test_a_chunked_body_cannot_pass_the_size_limit(served: int) -> None:
    """Without a Content-Length the size limit could not be checked before reading the
    body: a chunked upload is refused whatever its size, and the server stays up."""
    connection = http.client.HTTPConnection("127.0.0.1", served, timeout=120)
    body = json.dumps({"model": "labels", "messages": [{"role": "user", "content": "x"}]})
    chunks = (part.encode() for part in (body[:20], body[20:]))
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    connection.request(
        "POST", "/v1/chat/completions", body=chunks, headers=headers, encode_chunked=True
    )
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 411 and "Content-Length" in answer["error"]["message"]
    assert healthy(served)


def test_an_api_key_is_required_when_set_and_beyond_loopback(tiny_run: Path) -> None:
    with server(str(tiny_run), env={"TUNELAB_API_KEY": KEY}) as (port, _):
        with pytest.raises(Exception, match="401"):
            client(port, "wrong").models.list()
        assert client(port, KEY).models.list().data
        assert call(port, "GET", "/health")[0] == 200  # health needs no key
    refused = subprocess.run(
        [sys.executable, "-m", "tunelab", "serve", str(tiny_run), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "TUNELAB_API_KEY"},
    )
    assert refused.returncode == 2 and "TUNELAB_API_KEY" in refused.stdout


def load(port: int, requests: int, clients: int) -> dict[str, Any]:
    """``requests`` chat calls from ``clients`` threads; latencies, errors, 429s, tokens."""
    latencies, errors, limited, tokens = [], [], [], []
    todo = list(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        api = client(port)
        while True:
            with lock:
                if not todo:
                    return
                index = todo.pop()
            started = time.perf_counter()
            try:
                answer = api.chat.completions.create(
                    model="labels",
                    messages=[{"role": "user", "content": f"评论 {index}：好还是坏？"}],
                    temperature=0,
                    max_tokens=8,
                )
                tokens.append(answer.usage.completion_tokens)
                latencies.append(time.perf_counter() - started)
            except RateLimitError:
                limited.append(index)
            except Exception as error:
                errors.append(repr(error))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "errors": errors,
        "limited": len(limited),
        "ok": len(latencies),
        "p50": statistics.median(ordered) if ordered else None,
        "p95": ordered[int(0.95 * (len(ordered) - 1))] if ordered else None,
        "tokens_per_s": sum(tokens) / seconds,
    }


def test_two_hundred_requests_from_sixteen_clients(served: int) -> None:
    result = load(served, 200, 16)
    print(f"load: {result}")
    assert result["errors"] == [] and result["limited"] == 0 and result["ok"] == 200


def test_a_small_queue_answers_429_with_retry_after(tiny_run: Path) -> None:
    with server(str(tiny_run), "--max-batch", "1", "--max-queue", "1") as (port, _):
        result = load(port, 40, 16)
        assert result["errors"] == [] and result["limited"] > 0 and result["ok"] > 0
        print(f"small queue: {result}")


def test_sigterm_finishes_what_runs_refuses_what_comes_and_exits_0(tiny_run: Path) -> None:
    with server(str(tiny_run)) as (port, process):
        outcome: dict[str, Any] = {}

        def slow() -> None:
            answer = client(port).chat.completions.create(
                model="labels",
                messages=[{"role": "user", "content": "评论：好还是坏？"}],
                max_tokens=2000,
                # a grammar that allows no end before 2,000 letters: a long request
                response_format={"type": "regex", "regex": "[a-z]{2000}"},
            )
            outcome["answer"] = answer.choices[0].finish_reason
            outcome["ended"] = time.monotonic()

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(1.0)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, body = call(port, "GET", "/v1/models")
        thread.join(timeout=300)
        assert status == 503 and "shutting down" in body["error"]["message"]
        assert outcome.get("answer") in ("stop", "length")
        assert outcome["ended"] > signalled  # it was running at the signal, and finished
        assert process.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two steps on the embedded model: its answers are real sentences, not a tiny model's."""
    from tunelab.config_file import validate_config
    from tunelab.train.run import train

    root = tmp_path_factory.mktemp("embedded-run")
    rows = [
        {"instruction": f"Say something kind about day {i}.", "output": "A good day."}
        for i in range(8)
    ]
    data = root / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raw = {
        "name": "kind",
        "output_dir": str(root / "runs"),
        "data": {"train": str(data), "max_length": 128},
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-4, "save_every": None},
        # one prompt per batch in predict, as a server request alone is decoded
        "eval": {"generate": False, "generation": {"max_new_tokens": 20, "batch_size": 1}},
    }
    train(validate_config(raw, "embedded"))
    return root / "runs" / "kind"


@pytest.mark.slow
def test_served_greedy_answers_equal_predict_token_for_token(
    embedded_run: Path, tmp_path: Path
) -> None:
    questions = ["What is the capital of France?", "Name a color.", "写一句关于春天的话。"]
    source = tmp_path / "questions.jsonl"
    source.write_text("\n".join(json.dumps({"instruction": q}) for q in questions) + "\n")
    output = tmp_path / "answers.jsonl"
    predicted = subprocess.run(
        [
            *(sys.executable, "-m", "tunelab", "predict", str(embedded_run)),
            *("--input", str(source), "--output", str(output)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    expected = [json.loads(line)["prediction"] for line in output.read_text().splitlines()]
    with server(str(embedded_run)) as (port, _):
        api = client(port)
        served = [
            api.chat.completions.create(
                model="kind", messages=[{"role": "user", "content": q}], temperature=0
            )
            .choices[0]
            .message.content
            for q in questions
        ]
    assert all(len(answer) > 5 for answer in expected)  # real answers, not an empty string
    assert served == expected


def test_no_cors_unless_asked(served: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", served, timeout=30)
    connection.request("GET", "/v1/models", headers={"Origin": "https://evil.example"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    assert response.getheader("access-control-allow-origin") is None


def running(port: int) -> float:
    _, text = call(port, "GET", "/metrics")
    line = next(
        x for x in text.splitlines() if x.startswith('tunelab_running_requests{model="labels"}')
    )
    return float(line.split()[-1])


def test_a_client_that_goes_away_cancels_its_generation(served: int) -> None:
    body = {
        "model": "labels",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 2000,
        "stream": True,
        "response_format": {"type": "regex", "regex": "[a-z]{2000}"},
    }
    connection = http.client.HTTPConnection("127.0.0.1", served, timeout=60)
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data:")
    deadline = time.monotonic() + 30
    while running(served) != 1.0:  # the engine takes the request up
        assert time.monotonic() < deadline
        time.sleep(0.05)
    connection.close()  # the client leaves mid-answer
    deadline = time.monotonic() + 30
    while running(served) != 0.0:
        assert time.monotonic() < deadline, "the generation went on without its client"
        time.sleep(0.2)


def test_print_vllm_gives_the_command_and_what_vllm_refuses(
    tiny_run: Path, class_run: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tunelab", "serve", str(tiny_run), str(class_run), "--print-vllm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert "vllm serve " in said and "--enable-lora" in said
    assert f"--lora-modules labels={tiny_run / 'adapter'}" in said
    assert "--max-lora-rank 8" in said  # rank 4 adapters; vLLM takes 8 and up
    assert "reviews: trains ['score'" in said and "(modules_to_save)" in said
