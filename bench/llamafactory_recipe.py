"""LLaMA-Factory on the shared workload, through its own CLI and YAML in its own environment.

The environment is `bench/.envs/llamafactory` (made by `bench/setup_llamafactory.sh`). Rows
are given in Alpaca form, LoRA on the same seven modules, same batch, steps and order
(`disable_shuffling`). Prints one JSON line like trainer_recipe.py, or {"error": ...}.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import time
from pathlib import Path

import yaml

from bench.workload import BENCH_DIR, WORK_DIR, load_workload

ENV = BENCH_DIR / ".envs" / "llamafactory"
SEVEN = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def write_inputs(work, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    info = {"bench": {"file_name": str(Path(work.data_file).resolve()), "formatting": "alpaca"}}
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    config = {
        "model_name_or_path": work.model_dir,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": work.lora_r,
        "lora_alpha": work.lora_alpha,
        "lora_dropout": work.lora_dropout,
        "lora_target": SEVEN,
        "dataset": "bench",
        "dataset_dir": str(folder),
        "template": "chatml",
        "cutoff_len": work.max_length,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(folder / "out"),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "per_device_train_batch_size": work.batch_size,
        "gradient_accumulation_steps": work.grad_accum,
        "learning_rate": work.learning_rate,
        "max_steps": work.steps,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "seed": work.seed,
        "disable_shuffling": True,
        "include_effective_tokens_per_second": True,
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
    }
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", required=True)
    work = load_workload(parser.parse_args().workload)
    cli = ENV / "bin" / "llamafactory-cli"
    if not cli.exists():
        print(json.dumps({"error": f"{cli} missing: run bench/setup_llamafactory.sh"}))
        return
    config = write_inputs(work, WORK_DIR / "llamafactory")
    started = time.perf_counter()
    done = subprocess.run([str(cli), "train", str(config)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log = done.stdout + done.stderr
    (WORK_DIR / "llamafactory" / "log.txt").write_text(log, encoding="utf-8")
    if done.returncode != 0:
        last = [line for line in log.splitlines() if line.strip()][-3:]
        print(json.dumps({"error": f"exit {done.returncode}: " + " | ".join(last)}))
        return
    result = json.loads((WORK_DIR / "llamafactory" / "out" / "train_results.json").read_text())
    state = json.loads((WORK_DIR / "llamafactory" / "out" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    runtime = result.get("train_runtime", seconds)
    effective = result.get("effective_tokens_per_sec")
    print(
        json.dumps(
            {
                "real_tokens": round(effective * runtime) if effective else None,
                "padded_tokens": None,
                "seconds": runtime,
                "losses": losses,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "note": re.sub(r"\s+", " ", f"wall {seconds:.0f}s incl. load"),
            }
        )
    )


if __name__ == "__main__":
    main()
