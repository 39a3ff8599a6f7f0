"""tunelab on the shared workload: its own loop, with the LoRA settings given.

`--defaults` keeps tunelab's own LoRA settings (r 16, dropout 0) instead of the workload's;
`--precision` picks fp32 or bf16 autocast; `--nproc N` trains data-parallel in N processes
as `tunelab train --nproc N` does (peak RSS is then the sum of theirs). Prints one JSON line
like trainer_recipe.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from rich.console import Console

from bench.workload import WORK_DIR, load_workload
from tunelab.config_file import validate_config
from tunelab.train.launch import start_workers, wait_for_workers
from tunelab.train.loop import run_loop
from tunelab.train.run import build_run

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", required=True)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--defaults", action="store_true")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="KEY=VALUE (train), data.KEY=VALUE or lora.KEY=VALUE",
    )
    args = parser.parse_args()
    if args.nproc > 1 and "RANK" not in os.environ:
        print(json.dumps(in_workers(args.nproc)))
        return
    work = load_workload(args.workload)
    lora = (
        {}
        if args.defaults
        else {
            "r": work.lora_r,
            "alpha": work.lora_alpha,
            "dropout": work.lora_dropout,
            "target_modules": SEVEN,
        }
    )
    train = {
        "max_steps": work.steps,
        "batch_size": work.batch_size,
        "grad_accum": work.grad_accum,
        "learning_rate": work.learning_rate,
        "warmup_ratio": 0.0,
        "shuffle": False,
        "save_every": None,
        "precision": args.precision,
        "seed": work.seed,
    }
    data_section = {"train": work.data_file, "val": work.data_file, "max_length": work.max_length}
    sections = {"data": data_section, "lora": lora, "": train}
    for item in args.set:
        key, value = item.split("=", 1)
        section, _, name = key.rpartition(".")
        if section not in sections:
            raise SystemExit(f"--set {item}: expected KEY, data.KEY or lora.KEY")
        sections[section][name] = json.loads(value)
    config = validate_config(
        {
            "name": "tunelab",
            "output_dir": str(WORK_DIR),
            "model": work.model_dir,
            "data": data_section,
            "lora": lora,
            "train": train,
            "eval": {"generate": False},
        },
        "bench",
    )
    session = build_run(config, overwrite=True, console=Console(quiet=True)).session
    run = session.run
    started = time.perf_counter()
    run_loop(session, 0)
    seconds = time.perf_counter() - started
    records = run.read_metrics()
    print(
        json.dumps(
            {
                "real_tokens": sum(r["real_tokens"] for r in records if "real_tokens" in r),
                "padded_tokens": sum(r["padded_tokens"] for r in records if "padded_tokens" in r),
                "seconds": seconds,
                "losses": [r["loss"] for r in records if "loss" in r],
                "step_seconds": [r["seconds"] for r in records if "seconds" in r],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def in_workers(nproc: int) -> dict:
    """This command in ``nproc`` workers: the main one's result, with every worker's peak RSS."""
    command = [sys.executable, "-m", "bench.tunelab_recipe", *sys.argv[1:]]
    workers = start_workers(command, nproc, stdout=subprocess.PIPE, text=True)
    outputs = [worker.communicate()[0] for worker in workers]
    if wait_for_workers(workers):
        raise SystemExit(f"a worker failed: {[w.returncode for w in workers]}")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    return {**results[0], "peak_rss_mb": sum(r["peak_rss_mb"] for r in results)}


if __name__ == "__main__":
    main()
