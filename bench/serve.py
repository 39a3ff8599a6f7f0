"""Serving throughput side by side in one run: `tunelab serve` (batched) against the same
model decoded one request at a time (`--max-batch 1`, what an engine with one request in
flight does), and `transformers serve` on the merged run (plain and with its continuous
batching), each at 1, 4 and 16 concurrent clients.

    python -m bench.serve [--run RUN] [--requests-per-client 2] [--max-tokens 48]

Without --run it trains a two-step run of the embedded model first. Writes
results/<date>-<machine>-serve.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from datetime import date
from pathlib import Path
from typing import Any

from bench.run import free_path, machine
from bench.workload import BENCH_DIR, WORK_DIR

QUESTIONS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short paragraph about autumn in a small town.",
    "Describe how a bicycle works to a child.",
    "List some ways to save water at home, with a sentence on each.",
    "写一段话，介绍一下春天的公园。",
    "Tell a short story about a cat who learns to read.",
]
CLIENTS = (1, 4, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished SFT run (default: train one)")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    run = args.run or train_run()
    merged = merge(run)
    rows = []
    for label, command, model in contenders(run, merged):
        print(f"== {label}", flush=True)
        with server(command) as port:
            for clients in CLIENTS:
                measured = load(port, model, clients, args.requests_per_client, args.max_tokens)
                print(f"   {clients:>2} clients: {measured}", flush=True)
                rows.append({"contender": label, "clients": clients, **measured})
    write(rows, args)


def contenders(run: Path, merged: Path) -> list[tuple[str, list[str], str]]:
    tunelab = [sys.executable, "-m", "tunelab", "serve", str(run), "--port", "{port}"]
    hf = [
        *(sys.executable, "-m", "transformers.cli.transformers", "serve"),
        *("--force-model", str(merged), "--port", "{port}", "--host", "127.0.0.1"),
        *("--device", "cpu", "--dtype", "float32"),
    ]
    return [
        ("tunelab serve (batched, max 16)", tunelab, run.name),
        ("tunelab serve, one request at a time", [*tunelab, "--max-batch", "1"], run.name),
        ("transformers serve (merged run)", hf, str(merged)),
        (
            "transformers serve --continuous-batching (merged run)",
            [*hf, "--continuous-batching"],
            str(merged),
        ),
    ]


def train_run() -> Path:
    from tunelab.config_file import validate_config
    from tunelab.train.run import train

    folder = WORK_DIR / "serve"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"instruction": f"Say something about day {i}.", "output": "A fine day."} for i in range(8)
    ]
    data = folder / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raw = {
        "name": "served",
        "output_dir": str(folder / "runs"),
        "data": {"train": str(data), "max_length": 128},
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-4, "save_every": None},
        "eval": {"generate": False},
    }
    train(validate_config(raw, "bench"), overwrite=True)
    return folder / "runs" / "served"


def merge(run: Path) -> Path:
    from tunelab.use.merge import merge_run

    target = run.parent.parent / "merged"
    if not (target / "config.json").is_file():
        merge_run(run, target)
    return target


@contextmanager
def server(command: list[str]) -> Any:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [part.replace("{port}", str(port)) for part in command]
    log = open(WORK_DIR / "serve-server.log", "w")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{argv[:5]} did not start; see {log.name}")
            time.sleep(0.5)
        yield port
    finally:
        with suppress(ProcessLookupError):
            process.terminate()
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        with suppress(ProcessLookupError):
            process.kill()
        log.close()


def _answers(port: int) -> bool:
    from urllib.request import urlopen

    try:
        with urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def load(port: int, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    from openai import OpenAI

    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    todo = list(range(clients * per_client))
    lock = threading.Lock()

    def worker() -> None:
        api = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        while True:
            with lock:
                if not todo:
                    return
                index = todo.pop()
            started = time.perf_counter()
            try:
                answer = api.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
                    temperature=0,
                    max_tokens=max_tokens,
                    timeout=600,
                )
                tokens.append(answer.usage.completion_tokens)
                latencies.append(time.perf_counter() - started)
            except Exception as error:  # a contender's failure is a result, not a crash
                errors.append(f"{type(error).__name__}: {error}"[:120])

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "tokens": sum(tokens),
        "tokens_per_s": round(sum(tokens) / seconds, 1),
        "p50_s": round(statistics.median(ordered), 2) if ordered else None,
        "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 2) if ordered else None,
    }


def write(rows: list[dict], args: argparse.Namespace) -> None:
    base = {r["clients"]: r["tokens_per_s"] for r in rows if r["contender"].endswith("at a time")}
    lines = [
        f"# Serving throughput, {machine()}, {date.today()}",
        "",
        f"Embedded SmolLM2-135M with a LoRA adapter, fp32 on the CPU, greedy, max_tokens "
        f"{args.max_tokens}, {args.requests_per_client} requests per client, chat prompts of "
        f"{len(QUESTIONS)} kinds; `python -m bench.serve`. Nothing else ran on the machine.",
        "",
        "| contender | clients | requests ok | errors | completion tokens | tokens/s | "
        "vs one at a time | p50 s | p95 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = r["tokens_per_s"] / base[r["clients"]] if base.get(r["clients"]) else None
        lines.append(
            f"| {r['contender']} | {r['clients']} | {r['requests']} | {r['errors']} | "
            f"{r['tokens']} | {r['tokens_per_s']} | {f'{ratio:.2f}x' if ratio else ''} | "
            f"{r['p50_s']} | {r['p95_s']} |"
        )
    failures = [f"- {r['contender']}, {r['clients']} clients: {r['first_error']}" for r in rows]
    failures = [f for f, r in zip(failures, rows, strict=True) if r["errors"]]
    if failures:
        lines += ["", "First error of each failing row:", "", *failures]
    path = free_path(BENCH_DIR / "results" / f"{date.today()}-{machine()}-serve.md")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written to {path}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
