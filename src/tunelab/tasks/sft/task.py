"""Instruction SFT as a task kind: chats in, a LoRA causal LM out, scored by generating
answers to the val rows (per task, for multi-task data)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from tunelab.baseline import BaselineResult, is_label_task, sft_baseline
from tunelab.config import RunConfig
from tunelab.data.encode import encode_prompt
from tunelab.data.formats import Example, RowError, detect_prompt_format, prompt_of
from tunelab.data.prepare import load_examples, load_train_val
from tunelab.data.readers import RawRow
from tunelab.errors import TunelabError
from tunelab.models.load import load_causal_lm
from tunelab.scoring import EvalResult, answer_format, evaluate_generation
from tunelab.tasks.base import Autocast, Batcher, RunModel, Scorer
from tunelab.tasks.sft.data import PreparedData, prepare_sft, sft_batcher
from tunelab.tasks.sft.loss import CausalLMLoss


class SftRows(list):
    """Instruction rows to score (``Example``s); every row of a readable file is usable."""

    skipped = 0


class SftTask:
    """`task: sft` (the default)."""

    adapter_type = "CAUSAL_LM"
    trained_modules = None
    has_base_model = True

    def prepare(self, config: RunConfig, tokenizer: Any) -> PreparedData:
        """Load, validate, split and encode the chats."""
        if config.data.text_template is not None:
            raise TunelabError(
                "data.text_template frames the texts of task classify; an SFT run's prompts "
                "are its rows' own turns: remove it, or set task: classify"
            )
        return prepare_sft(config.data, tokenizer)

    def load_base(
        self, model_dir: Path, config: RunConfig, labels: list[str], tokenizer: Any, dtype: Any
    ) -> Any:
        """The causal LM."""
        return load_causal_lm(model_dir, config.model, dtype)

    def batcher(self, config: RunConfig, tokenizer: Any, segmented: bool) -> Batcher:
        """Packed (or padded) rows within ``train.forward_tokens``."""
        return sft_batcher(
            config.data, config.train.forward_tokens, tokenizer.pad_token_id, segmented
        )

    def loss(self, model: nn.Module, config: RunConfig, data: PreparedData) -> nn.Module:
        """Next-token cross-entropy on the assistant tokens."""
        return CausalLMLoss(model)

    def scorer(
        self,
        config: RunConfig,
        tokenizer: Any,
        data: PreparedData,
        batcher: Batcher,
        autocast: Autocast,
    ) -> Scorer | None:
        """Generate answers to the val rows and score them (``eval.generate``)."""
        if not config.eval.generate:
            return None

        def score(model: Any, name: str) -> EvalResult:
            model.config.use_cache = True
            with autocast():
                result = evaluate_generation(model, tokenizer, data.val.examples, config.eval, name)
            model.config.use_cache = False
            return result

        return score

    def score_base(
        self, model: Any, tokenizer: Any, config: RunConfig, data: PreparedData
    ) -> EvalResult | None:
        """The base model's answers to the val rows, scored the same way."""
        if not (config.eval.generate and data.val.examples):
            return None
        model.config.use_cache = True
        result = evaluate_generation(model, tokenizer, data.val.examples, config.eval, "base")
        model.config.use_cache = False
        return result

    def baseline(
        self, config: RunConfig, data: PreparedData
    ) -> Callable[[], BaselineResult] | None:
        """TF-IDF + LR for a label task whose answers the model generates."""
        if not (config.eval.generate and is_label_task(config.eval)):
            return None
        return partial(sft_baseline, config.eval, data.train.examples, data.val.examples)

    def eval_rows(
        self, config: RunConfig, tokenizer: Any, labels: list[str], path: Path | None
    ) -> SftRows:
        """The rows of ``path``, else the run's val split."""
        if path is not None:
            return SftRows(load_examples([path], config.data.format, config.data.sheet).examples)
        return SftRows(load_train_val(config.data)[1].examples)

    def score(self, run: RunModel, rows: Sequence[Example], name: str) -> EvalResult:
        """Generate answers to ``rows`` and score them."""
        return evaluate_generation(run.model, run.tokenizer, rows, run.config.eval, name)

    def classic(self, config: RunConfig, path: Path | None = None) -> BaselineResult | None:
        """TF-IDF + LR on the training rows, for a label task; else None."""
        if not is_label_task(config.eval):
            return None
        train, val, _ = load_train_val(config.data)
        rows = load_examples([path], config.data.format).examples if path else val.examples
        return sft_baseline(config.eval, train.examples, rows)

    def predict(
        self, run: RunModel, rows: Sequence[RawRow], on_batch: Callable[[int], None] | None = None
    ) -> list[dict[str, Any]]:
        """An answer per row with a prompt; the prompt format is detected from the rows."""
        format_name = detect_prompt_format(rows)
        if format_name is None:
            raise TunelabError("no prompts; expected instruction, conversations or messages")
        settings = run.config.eval
        thinking = settings.generation.thinking
        prompts: dict[int, list[int]] = {}
        records = [dict(row.data) for row in rows]
        for index, row in enumerate(rows):
            try:
                messages = prompt_of(row.data, format_name)
                prompts[index] = encode_prompt(run.tokenizer, messages, thinking)
            except RowError as error:
                records[index]["error"] = f"{row.source}: {error.field or 'row'}: {error.reason}"
        answer = answer_format(settings.scoring)
        constrain = settings.generation.constrain and answer.defined
        formats = [answer] * len(prompts) if constrain else None
        outputs = run.generate_ids(list(prompts.values()), formats, on_batch)
        for index, text in zip(prompts, outputs, strict=True):
            records[index]["prediction"] = text
        return records
