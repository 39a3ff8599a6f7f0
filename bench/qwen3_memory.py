"""Qwen3-0.6B architecture, random weights: one LoRA training step at batch 8 x 512.

Compares the plain loss (`model(input_ids, labels=...)`: logits for every position over the
151,936-entry vocabulary, upcast to fp32) with tunelab's loss (LM head only where a label
exists, in chunks whose gradient is made as they are computed). Both variants train the
same model, built as tunelab builds it on a CPU (fused LoRA layers; `--peft-layers` for
PEFT's own), so only the loss differs. Each variant runs in its own process so its peak
RSS is its own. Labels: `answers` marks the last 64 tokens of each row (long
prompt, short answer), `all` marks every token (plain language modelling).

    python -m bench.qwen3_memory            # both variants, both label layouts, a table
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import psutil
import torch

ROWS, WIDTH, ANSWER = 8, 512, 64


def qwen3_06b_config():
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=151_936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        max_position_embeddings=40_960,
        rope_theta=1_000_000.0,
    )


def one_variant(
    variant: str,
    labels_kind: str,
    steps: int,
    checkpointing: int = 0,
    kernels: bool = True,
    precision: str = "auto",
) -> dict:
    """Build the model, take ``steps`` training steps, report time and peak RSS.

    ``kernels``: the model as tunelab trains it on a CPU (``precision``: bf16 frozen
    weights where the CPU has bf16, fused LoRA layers, lean SwiGLU, grouped attention,
    activation-sized heap blocks mapped from the OS), for both variants alike, so that only
    the loss differs between them.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3ForCausalLM

    from tunelab.cpu.training import prepare_for_cpu_training
    from tunelab.data.batching import Batch
    from tunelab.models.load import set_activation_checkpointing
    from tunelab.precision import resolve_precision
    from tunelab.tasks.sft.loss import CausalLMLoss

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(qwen3_06b_config())
    model.config.use_cache = False
    if checkpointing:
        set_activation_checkpointing(model, checkpointing)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    precision = resolve_precision(precision) if kernels else "fp32"
    if kernels:
        prepare_for_cpu_training(model, precision, ROWS * WIDTH)
    ids = torch.randint(0, 151_643, (ROWS, WIDTH))
    labels = ids.clone()
    if labels_kind == "answers":
        labels[:, : WIDTH - ANSWER] = -100
    # resident now, not the peak so far: building the model peaks above what it then holds
    baseline = psutil.Process().memory_info().rss / 2**20
    loss_module = CausalLMLoss(model)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        if variant == "plain":
            loss = model(input_ids=ids, labels=labels).loss
        else:
            positions = torch.arange(WIDTH).expand(ROWS, WIDTH)
            targets = int((labels[:, 1:] != -100).sum())
            summed, count = loss_module(Batch(ids, labels, positions, None, ids.numel(), targets))
            loss = summed / count
        loss.backward()
        model.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "labels": labels_kind,
        "kernels": kernels,
        "precision": precision,
        "loss": loss.item(),
        "seconds_per_step": min(seconds),
        "tokens_per_s": ROWS * WIDTH / min(seconds),
        "peak_rss_mb": peak,
        "model_rss_mb": baseline,
        "step_peak_mb": peak - baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=["plain", "tunelab"])
    parser.add_argument("--labels", choices=["answers", "all"], default="answers")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--gradient-checkpointing",
        type=int,
        nargs="?",
        const=1,
        default=0,
        metavar="N",
        help="recompute every N-th decoder layer in backward (N omitted: every layer)",
    )
    parser.add_argument(
        "--peft-layers",
        action="store_true",
        help="PEFT's own LoRA forward, not tunelab's fused one",
    )
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    args = parser.parse_args()
    if args.variant:
        result = one_variant(
            args.variant,
            args.labels,
            args.steps,
            args.gradient_checkpointing,
            kernels=not args.peft_layers,
            precision=args.precision,
        )
        print(json.dumps(result))
        return
    rows = []
    for labels_kind in ("answers", "all"):
        for variant in ("plain", "tunelab"):
            command = [
                sys.executable,
                "-m",
                "bench.qwen3_memory",
                "--variant",
                variant,
                "--labels",
                labels_kind,
                "--steps",
                str(args.steps),
                *(
                    ["--gradient-checkpointing", str(args.gradient_checkpointing)]
                    if args.gradient_checkpointing
                    else []
                ),
                *(["--peft-layers"] if args.peft_layers else []),
                "--precision",
                args.precision,
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("{")]
            rows.append(
                json.loads(line[-1])
                if line
                else {
                    "variant": variant,
                    "labels": labels_kind,
                    # -9 is the kernel's OOM killer: the variant needs more than this machine has
                    "error": f"exit {done.returncode}"
                    + (" (killed: out of memory)" if done.returncode == -9 else "")
                    + f"; {done.stderr[-200:]}",
                }
            )
            print(rows[-1], flush=True)
    print("| labels | loss | tokens/s | peak RSS MB | step peak above model MB | loss value |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        if "error" in row:
            print(f"| {row['labels']} | {row['variant']} | failed: {row['error']} | | | |")
            continue
        print(
            f"| {row['labels']} | {row['variant']} | {row['tokens_per_s']:.0f} | {row['peak_rss_mb']:,.0f} | "
            f"{row['step_peak_mb']:,.0f} | {row['loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
