"""Options that trade speed for memory, or compile time for speed, on the shared workload.

tunelab with its defaults, then the same with `gradient_checkpointing`, with `compile` and
with LoRA dropout, each in its own process: the first step's seconds (where compilation
happens), the median of the later steps, real tokens/s over the later steps, peak RSS and the
final loss.

    python -m bench.options --steps 12      # writes bench/results/<date>-<machine>-options.md
    python -m bench.options --only defaults --only "LoRA dropout 0.1"
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics

from bench.run import free_path, machine, run_contender
from bench.workload import BENCH_DIR, build_workload

BASE = ["bench.tunelab_recipe", "--defaults", "--precision", "auto"]
OPTIONS = {
    "defaults": BASE,
    "gradient checkpointing": [*BASE, "--set", "gradient_checkpointing=true"],
    "torch.compile": [*BASE, "--set", "compile=true"],
    "LoRA dropout 0.1": [*BASE, "--set", "lora.dropout=0.1"],
}


def describe(result: dict) -> str:
    """One table row from a contender's JSON line."""
    if "error" in result:
        return f"did not run: {result['error'][:300]} | | | | |"
    steps = result["step_seconds"]
    tokens_per_step = result["real_tokens"] / len(steps)
    later = statistics.median(steps[1:])
    return (
        f"{steps[0]:.1f} | {later:.2f} | {tokens_per_step / later:.0f} | "
        f"{result['peak_rss_mb']:,.0f} | {statistics.fmean(result['losses'][-3:]):.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument(
        "--only", action="append", choices=list(OPTIONS), help="these options (repeatable)"
    )
    args = parser.parse_args()
    work = build_workload(args.steps)
    lines = [
        "| tunelab (precision auto, LoRA r16; dropout 0 unless named) | first step s | "
        "later steps, median s | real tok/s (later steps) | peak RSS MB | final loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    raw = {}
    for name in args.only or OPTIONS:
        result = run_contender(OPTIONS[name], work)
        raw[name] = result
        lines.append(f"| {name} | {describe(result)}")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    out = free_path(BENCH_DIR / "results" / f"{datetime.date.today()}-{machine()}-options.md")
    out.write_text(
        f"# Speed/memory options, {datetime.date.today()}, {machine()}\n\n"
        f"Workload as in `make bench`: {work.samples} rows, {work.steps} optimizer steps.\n\n"
        f"{text}\n```json\n{json.dumps(raw, indent=1)}\n```\n",
        encoding="utf-8",
    )
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
