"""Opening a finished run: one object that generates, streams, classifies and ranks with the
run's own model, adapter, chat template and precision, from the run directory alone.

    from tunelab.use.open import open_run

    run = open_run("runs/sentiment")
    run.generate([[{"role": "user", "content": "评论：质量很好。好评还是差评？"}]])
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.config_file import load_config, plain_config
from tunelab.data.encode import encode_prompt
from tunelab.data.formats import Message
from tunelab.errors import TunelabError
from tunelab.generate import AnswerFormat, generate_texts
from tunelab.models.load import load_adapter, load_causal_lm, load_tokenizer
from tunelab.models.resolve import resolve_model
from tunelab.precision import base_dtype, bf16_frozen_matmuls, fp32_matmuls, usable_precision
from tunelab.ranking import rank_candidates
from tunelab.run_dir import RunDir
from tunelab.scoring import generation_options
from tunelab.tasks.base import Task
from tunelab.tasks.registry import TASKS


@dataclass
class OpenedRun:
    """A finished run's model, ready to use: the base with the chosen adapter (or none)."""

    run: RunDir
    config: RunConfig
    model: Any
    tokenizer: Any
    precision: str
    labels: list[str] = field(default_factory=list)  # a class head's, in id order
    adapter: Path | None = None  # None: the base model alone

    @property
    def task(self) -> Task:
        """The run's task kind."""
        return TASKS[self.config.task]

    def merge_adapter(self) -> None:
        """Fold the adapter into the base weights for a long scoring job: each layer then
        runs one matrix product instead of three (a quarter less time ranking candidates on a
        CPU), with results that differ by rounding only. Quantized bases keep the adapter.
        Weights a CPU holds in bf16 are folded in fp32: folded in bf16, a trained run's
        candidate scores moved ~0.3 nats from fp32 against ~0.1 unfolded."""
        if self.adapter is not None and self.config.model.quantization == "none":
            fp32_matmuls(self.model)
            self.model = self.model.merge_and_unload()

    def generate(
        self, chats: Sequence[list[Message]], formats: Sequence[AnswerFormat | None] | None = None
    ) -> list[str]:
        """Answers to ``chats``, each rendered with the run's chat template, decoded as the
        run's ``eval`` section says (greedy unless it sets a temperature)."""
        thinking = self.config.eval.generation.thinking
        prompts = [encode_prompt(self.tokenizer, chat, thinking=thinking) for chat in chats]
        return self.generate_ids(prompts, formats)

    def generate_ids(
        self,
        prompts: Sequence[list[int]],
        formats: Sequence[AnswerFormat | None] | None = None,
        on_batch: Any = None,
        **overrides: Any,
    ) -> list[str]:
        """Completions of tokenised prompts, in batches (``overrides``: GenerationOptions
        fields, such as max_new_tokens)."""
        self._needs_language_model()
        options = generation_options(self.config.eval, **overrides)
        return generate_texts(self.model, self.tokenizer, prompts, options, formats, on_batch)

    def stream(self, chat: list[Message], max_new_tokens: int = 256) -> Iterator[str]:
        """The greedy answer to ``chat``, piece by piece as it is decoded."""
        from transformers import TextIteratorStreamer

        self._needs_language_model()
        thinking = self.config.eval.generation.thinking
        ids = torch.tensor([encode_prompt(self.tokenizer, chat, thinking)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        arguments = {
            "input_ids": ids.to(self.device),
            "attention_mask": torch.ones_like(ids).to(self.device),
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "streamer": streamer,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        worker = threading.Thread(target=self._generate_quietly, kwargs=arguments)
        worker.start()
        held = None  # one piece behind, so the last can lose a character cut in two
        for piece in streamer:
            if held is not None:
                yield held
            held = piece
        if held is not None:
            yield held.rstrip("\ufffd")
        worker.join()

    def classify(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Per text, the probability of each label (a class-head run)."""
        from tunelab.tasks.classify.data import encode_text
        from tunelab.tasks.classify.head import inference_batcher, predict_classes

        if not self.labels:
            raise TunelabError(f"{self.run.root}: not a class-head run; it generates answers")
        samples = [encode_text(self.tokenizer, text, 0, self.config.data) for text in texts]
        batcher = inference_batcher(
            self.model, self.tokenizer.pad_token_id, self.config.train.forward_tokens
        )
        probabilities = predict_classes(self.model, samples, batcher).tolist()
        return [dict(zip(self.labels, row, strict=True)) for row in probabilities]

    def rank(
        self, prompt: list[int], candidates: Sequence[str], boundary: Sequence[int], depth: int
    ) -> list[tuple[str, float]]:
        """Candidate answers by the model's log-probability, best first
        (``ranking.rank_candidates``)."""
        self._needs_language_model()
        return rank_candidates(self.model, self.tokenizer, prompt, candidates, boundary, depth)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def _needs_language_model(self) -> None:
        if self.labels:
            raise TunelabError(
                f"{self.run.root}: a class-head run classifies texts; it does not generate"
            )

    def _generate_quietly(self, **arguments: Any) -> None:
        with torch.no_grad():
            self.model.generate(**arguments)


def open_run(
    run_dir: Path | str,
    checkpoint: str | None = None,
    base_only: bool = False,
    precision: str | None = None,
    overrides: Sequence[str] = (),
) -> OpenedRun:
    """Open a finished run: its adapter (`final`, `best` or a step), or its base model alone.
    A path that is not a run (a merged model directory, a .gguf file) or a model spec opens
    as a plain model (``open_model``).

    Everything comes from the run directory: its resolved config names the base model and
    the task, the adapter folder holds the LoRA weights and the tokenizer trained with, and
    run.json the precision it trained in (used where this machine runs it; ``precision``
    overrides it). ``overrides`` change settings of the config (``eval.max_new_tokens=8``).
    """
    run = RunDir(Path(run_dir))
    if not run.config.is_file():
        return open_model(str(run_dir), precision, overrides)
    config = load_config(run.config, list(overrides))
    task = TASKS[config.task]
    if base_only and not task.has_base_model:
        raise TunelabError("a class head has no base model to compare with: its head is trained")
    trained_with = run.read_record().get("precision", {}).get("resolved")
    chosen = usable_precision(precision or trained_with)
    adapter = None if base_only else run.adapter_of(checkpoint)
    saved = [f for f in (adapter, run.adapter) if f and (f / "tokenizer_config.json").is_file()]
    model_dir = resolve_model(config.model)
    tokenizer = load_tokenizer(saved[0] if saved else model_dir, config.model.trust_remote_code)
    labels = run.read_labels() if run.labels.is_file() else []
    model = task.load_base(model_dir, config, labels, tokenizer, base_dtype(chosen))
    if adapter is not None:
        model = load_adapter(model, adapter)
    model = _placed(model, chosen)
    return OpenedRun(run, config, model, tokenizer, chosen, labels, adapter)


def open_model(spec: str, precision: str | None = None, overrides: Sequence[str] = ()) -> OpenedRun:
    """A plain model (a merged run, any model directory, a .gguf file, an embedded alias or a
    hub id) opened as a run without an adapter, with the default settings (``overrides``
    change them)."""
    path = Path(spec)
    if path.is_dir() and not (path / "config.json").is_file():
        raise TunelabError(f"{spec}: neither a run directory (config.yaml) nor a model")
    config = plain_config(spec, overrides)
    chosen = usable_precision(precision)
    model_dir = resolve_model(config.model)
    tokenizer = load_tokenizer(model_dir, config.model.trust_remote_code)
    model = load_causal_lm(model_dir, config.model, base_dtype(chosen))
    return OpenedRun(RunDir(path), config, _placed(model, chosen), tokenizer, chosen, [], None)


def _placed(model: Any, precision: str) -> Any:
    """The model in eval mode where it runs best: on the GPU when there is one (a 4-bit base
    is already there), else on the CPU with bf16 frozen matmuls when bf16 was chosen."""
    if torch.cuda.is_available():
        if next(model.parameters()).device.type != "cuda":
            model = model.to("cuda")
    elif precision == "bf16":
        bf16_frozen_matmuls(model)
    return model.eval()
