"""The recipe today's scripts use: transformers.Trainer + PEFT LoRA, fp32, batch 2 x accum 4.

`--padding max_length` pads every sample to max_length (the seed scripts);
`--padding longest` pads to the longest sample of each batch (the best plain recipe).
Samples are tokenised exactly as tunelab does, so only the training machinery differs.
Prints one JSON line: real and padded tokens, seconds, per-step losses, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

from bench.workload import WORK_DIR, load_workload
from tunelab.data.encode import IGNORE_INDEX, encode_chat
from tunelab.data.prepare import load_examples
from tunelab.models.load import load_tokenizer

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class InOrderTrainer(Trainer):
    """Visits rows in file order, like every other contender."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


class CountingCollator:
    """Pads a batch and counts real and padded tokens."""

    def __init__(self, pad_id: int, padding: str, max_length: int) -> None:
        self.pad_id, self.padding, self.max_length = pad_id, padding, max_length
        self.real = 0
        self.padded = 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        width = self.max_length if self.padding == "max_length" else longest
        ids = torch.full((len(rows), width), self.pad_id)
        labels = torch.full((len(rows), width), IGNORE_INDEX)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(row["input_ids"]),
                torch.tensor(row["labels"]),
                1,
            )
        self.real += int(mask.sum())
        self.padded += ids.numel()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", required=True)
    parser.add_argument("--padding", choices=["max_length", "longest"], required=True)
    args = parser.parse_args()
    work = load_workload(args.workload)
    tokenizer = load_tokenizer(work.model_dir)
    examples = load_examples([work.data_file]).examples
    rows = [encode_chat(tokenizer, e.messages, work.max_length) for e in examples]
    dataset = [{"input_ids": r.input_ids, "labels": r.labels} for r in rows]

    set_seed(work.seed)
    model = AutoModelForCausalLM.from_pretrained(work.model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=work.lora_r,
        lora_alpha=work.lora_alpha,
        lora_dropout=work.lora_dropout,
        target_modules=SEVEN,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    collator = CountingCollator(tokenizer.pad_token_id, args.padding, work.max_length)
    training = TrainingArguments(
        output_dir=str(WORK_DIR / f"trainer-{args.padding}"),
        per_device_train_batch_size=work.batch_size,
        gradient_accumulation_steps=work.grad_accum,
        max_steps=work.steps,
        learning_rate=work.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=work.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = InOrderTrainer(
        model=model, args=training, train_dataset=dataset, data_collator=collator
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(
        json.dumps(
            {
                "real_tokens": collator.real,
                "padded_tokens": collator.padded,
                "seconds": seconds,
                "losses": losses,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
