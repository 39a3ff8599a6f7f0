"""Batched generation against a one-prompt-at-a-time `generate` loop, same 200 prompts.

Both decode greedily with the embedded SmolLM2-135M in the precision `auto` picks (bf16
matmuls on a CPU with native bf16, else fp32) and must produce the same answers; the table
gives the time of each and the ratio.

    python -m bench.generation --rows 200 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch

from bench.run import free_path, machine
from bench.workload import BENCH_DIR
from tunelab.config import ModelConfig
from tunelab.data.corpora import sentiment_rows
from tunelab.data.encode import encode_prompt
from tunelab.data.formats import from_alpaca
from tunelab.generate import GenerationOptions, generate_texts
from tunelab.models.load import load_causal_lm, load_tokenizer
from tunelab.models.resolve import resolve_model
from tunelab.precision import bf16_frozen_matmuls, resolve_precision


def one_by_one(model, tokenizer, prompts, max_new_tokens: int) -> list[str]:
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        outputs.append(tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True))
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    spec = ModelConfig()
    folder = resolve_model(spec)
    tokenizer = load_tokenizer(folder)
    model = load_causal_lm(folder, spec, torch.float32).eval()
    precision = resolve_precision("auto")
    if precision == "bf16":
        bf16_frozen_matmuls(model)
    _, rows, _ = sentiment_rows(0, args.rows, seed=11)
    prompts = [encode_prompt(tokenizer, from_alpaca(row)[:-1]) for row in rows]
    started = time.perf_counter()
    single = one_by_one(model, tokenizer, prompts, args.max_new_tokens)
    single_seconds = time.perf_counter() - started
    started = time.perf_counter()
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    batched = generate_texts(model, tokenizer, prompts, options)
    batched_seconds = time.perf_counter() - started
    same = sum(a.strip() == b.strip() for a, b in zip(single, batched, strict=True))
    prompt_tokens = sum(len(p) for p in prompts)
    table = "\n".join(
        [
            f"{args.rows} prompts ({prompt_tokens / args.rows:.0f} tokens on average), greedy, "
            f"max_new_tokens {args.max_new_tokens}, SmolLM2-135M, {precision} matmuls",
            "",
            "| method | seconds | prompts/s | batched speed-up |",
            "| --- | ---: | ---: | ---: |",
            f"| one prompt at a time (`model.generate` in a loop) | {single_seconds:.1f} | {args.rows / single_seconds:.2f} | 1.00x |",
            f"| tunelab batched (batch {args.batch_size}, sorted by length, left padding) | {batched_seconds:.1f} | {args.rows / batched_seconds:.2f} | {single_seconds / batched_seconds:.2f}x |",
            "",
            f"Identical answers: {same} of {args.rows} (bf16 rounding differs with padding and batch shape).",
        ]
    )
    print(table)
    out = free_path(BENCH_DIR / "results" / f"{datetime.date.today()}-{machine()}-generation.md")
    out.write_text(
        f"# Batched generation, {datetime.date.today()}, {machine()}\n\n{table}\n", encoding="utf-8"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
