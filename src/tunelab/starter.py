"""`tunelab init`: a commented starter config and a tiny data file to edit."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError

STARTER_CONFIG = """\
# tunelab run config. Every key is optional except data.train; the values shown are the
# defaults unless marked. Check the data first:  tunelab data check data/sample.jsonl
# Train:  tunelab train config.yaml   (override any key: --set train.max_steps=20)

name: starter                 # the run directory is output_dir/name
output_dir: runs

# smollm2-135m (embedded, works offline) | a local HF model directory | a .gguf file
# | a hub id such as Qwen/Qwen3-0.6B | modelscope:Qwen/Qwen3-0.6B
model: smollm2-135m

data:
  train: data/sample.jsonl    # .jsonl, .json (array), .csv, .xlsx; a list of files works too
  # val: data/val.jsonl       # without it, val_fraction of train is held out (seeded)
  format: auto                # auto | alpaca | sharegpt | messages
  max_length: 1024            # longer samples are cut; cut-to-nothing ones are rejected
  val_fraction: 0.1
  strict: false               # true: any rejected row stops the run
  packing: true               # several samples per row, no cross-sample attention

lora:
  r: 16
  alpha: 32
  dropout: 0.0
  target_modules: all-linear  # or a list: [q_proj, k_proj, v_proj, o_proj]

train:
  epochs: 1                   # or max_steps: 200
  batch_size: 8               # samples per micro-batch
  grad_accum: 1               # micro-batches per optimizer step
  learning_rate: 2.0e-4
  scheduler: cosine           # cosine | linear | constant, after warmup_ratio of the steps
  warmup_ratio: 0.05
  max_grad_norm: 1.0
  precision: auto             # auto | fp32 | bf16 | fp16
  seed: 42
  save_every: 50              # checkpoints, keep_checkpoints newest kept
  keep_checkpoints: 2
  # val_loss_every: 50        # validation loss every N steps

eval:
  generate: true              # after training: generate answers for val rows and score them
  max_rows: 200
  compare_base: false         # true: score the base model on the same rows first
  generation:
    max_new_tokens: 64
  scoring:
    metric: exact_match       # exact_match | accuracy (first line equals the label)
  # select:
  #   every: 50               # score every N steps and keep the best adapter in best/
"""

SAMPLE_ROWS = [
    {
        "instruction": "把下面的句子翻译成英文。",
        "input": "今天天气很好。",
        "output": "The weather is nice today.",
    },
    {"instruction": "Translate into Chinese.", "input": "Good morning!", "output": "早上好！"},
    {"instruction": "2 加 3 等于几？只回答数字。", "output": "5"},
    {"instruction": "What is the capital of France? Answer with one word.", "output": "Paris"},
    {
        "instruction": "判断情感倾向，只回答“正面”或“负面”。",
        "input": "房间干净，服务热情。",
        "output": "正面",
    },
    {
        "instruction": "判断情感倾向，只回答“正面”或“负面”。",
        "input": "等了两个小时还没上菜。",
        "output": "负面",
    },
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
    {"instruction": "歇后语『外甥打灯笼』的下一句是？", "output": "照舅（旧）"},
    {"instruction": "用一个词概括：春天、夏天、秋天、冬天。", "output": "四季"},
    {"instruction": "Is 17 a prime number? Answer yes or no.", "output": "yes"},
]


def write_starter(directory: Path) -> list[Path]:
    """Write ``config.yaml`` and ``data/sample.jsonl``; never overwrite an existing file."""
    config = directory / "config.yaml"
    sample = directory / "data" / "sample.jsonl"
    existing = [p for p in (config, sample) if p.exists()]
    if existing:
        raise TunelabError(f"{existing[0]} already exists; choose an empty folder")
    sample.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(STARTER_CONFIG, encoding="utf-8")
    lines = [json.dumps(row, ensure_ascii=False) for row in SAMPLE_ROWS]
    sample.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [config, sample]
