"""bf16 autocast against fp32 on this CPU: the same steps, the same rows, two loss curves.

`precision: auto` chooses bf16 on a CPU with native bf16 instructions only because this
comparison holds: the curves track each other and the final losses agree. Run it again on
another machine before trusting `auto` there:

    python -m bench.precision --steps 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from bench.workload import build_workload


def curve(precision: str, workload_json: str, batch: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.tunelab_recipe",
        "--workload",
        workload_json,
        "--defaults",
        "--precision",
        precision,
        "--set",
        f"batch_size={batch}",
        "--set",
        "grad_accum=1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    # the workload's rows are sized for batch 2 x 4 = 8 per step
    work = build_workload(args.steps * args.batch // 8)
    runs = {p: curve(p, work.to_json(), args.batch) for p in ("fp32", "bf16")}
    fp32, bf16 = runs["fp32"]["losses"], runs["bf16"]["losses"]
    window = 5
    smooth = [
        (statistics.fmean(fp32[i : i + window]), statistics.fmean(bf16[i : i + window]))
        for i in range(0, len(fp32) - window + 1, window)
    ]
    final_fp32, final_bf16 = statistics.fmean(fp32[-10:]), statistics.fmean(bf16[-10:])
    print(f"steps {len(fp32)}  batch {args.batch}  rows {work.samples}")
    print("| steps | fp32 loss | bf16 loss | relative gap |")
    print("| --- | ---: | ---: | ---: |")
    for index, (a, b) in enumerate(smooth):
        print(
            f"| {index * window + 1}-{(index + 1) * window} | {a:.4f} | {b:.4f} | {(b - a) / a:+.1%} |"
        )
    for name in ("fp32", "bf16"):
        run = runs[name]
        print(
            f"{name}: {run['real_tokens'] / run['seconds']:.0f} real tok/s, peak RSS {run['peak_rss_mb']:.0f} MB"
        )
    print(
        f"final loss (mean of last 10 steps): fp32 {final_fp32:.4f}  bf16 {final_bf16:.4f}  "
        f"gap {(final_bf16 - final_fp32) / final_fp32:+.1%}"
    )


if __name__ == "__main__":
    main()
