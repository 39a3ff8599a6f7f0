"""CPU work beside other busy processes: generation and training steps of the embedded model
with OpenMP's default wait policy and with PASSIVE, alone and beside 1 and 2 competing
processes (each a PyTorch matmul loop, as another training job is).

    python -m bench.contention

Each measurement runs in a fresh process (the policy is read when OpenMP starts). Writes
results/<date>-<machine>-contention.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date

from bench.run import free_path, machine
from bench.workload import BENCH_DIR

GENERATE = """
import time, torch
from tunelab.config import ModelConfig
from tunelab.data.encode import encode_prompt
from tunelab.generate import GenerationOptions, generate_texts
from tunelab.models.load import load_causal_lm, load_tokenizer
from tunelab.models.resolve import resolve_model
folder = resolve_model(ModelConfig())
tokenizer = load_tokenizer(folder)
model = load_causal_lm(folder, ModelConfig(), torch.float32).eval()
questions = ["What is 2+2?", "Name a color."]
prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
generate_texts(model, tokenizer, prompts[:1], GenerationOptions(max_new_tokens=2, batch_size=1))
started = time.perf_counter()
generate_texts(model, tokenizer, prompts, GenerationOptions(max_new_tokens=10, batch_size=1))
print(time.perf_counter() - started)
"""
TRAIN = """
import time, torch
from tunelab.config import LoraConfig, ModelConfig
from tunelab.cpu.training import prepare_for_cpu_training
from tunelab.models.load import attach_lora, load_causal_lm
from tunelab.models.resolve import resolve_model
model = attach_lora(load_causal_lm(resolve_model(ModelConfig()), ModelConfig(), torch.float32),
                    LoraConfig(r=16))
prepare_for_cpu_training(model, "fp32", 512)
model.train()
ids = torch.randint(0, 49000, (2, 256), generator=torch.Generator().manual_seed(0))
def step():
    model(input_ids=ids).logits[:, -1].pow(2).mean().backward()
step()
started = time.perf_counter()
for _ in range(3):
    step()
print((time.perf_counter() - started) / 3)
"""
COMPETITOR = """
import torch
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh()
"""
WORKLOADS = {"generate 2 x 10 tokens (s)": GENERATE, "train step, 2 x 256 tokens (s)": TRAIN}
POLICIES = {
    "OpenMP default (spin, then sleep)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}
COMPETITORS = (0, 1, 2)


def measure(code: str, policy: dict[str, str], competitors: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    busy = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(competitors)]
    try:
        time.sleep(2)
        done = subprocess.run(
            [sys.executable, "-c", code], env={**env, **policy}, capture_output=True, text=True
        )
        return float(done.stdout.strip().splitlines()[-1])
    finally:
        for process in busy:
            process.kill()
            process.wait()


def main() -> None:
    rows = []
    for workload, code in WORKLOADS.items():
        for policy, env in POLICIES.items():
            timings = [measure(code, env, n) for n in COMPETITORS]
            print(workload, policy, timings, flush=True)
            rows.append((workload, policy, timings))
    lines = [
        f"# CPU work beside busy processes, {machine()}, {date.today()}",
        "",
        "Embedded SmolLM2-135M, fp32, torch's default thread count (the cores); each competitor "
        "is a PyTorch matmul loop; `python -m bench.contention`.",
        "",
        "| workload | wait policy | alone | 1 competitor | 2 competitors | 2 competitors / alone |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for workload, policy, (alone, one, two) in rows:
        lines.append(
            f"| {workload} | {policy} | {alone:.2f} | {one:.2f} | {two:.2f} | {two / alone:.1f}x |"
        )
    path = free_path(BENCH_DIR / "results" / f"{date.today()}-{machine()}-contention.md")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
