"""The run configuration's `eval` section: answer formats, generation, scoring, selection."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from tunelab.config_section import Number, Section

MetricName = Literal["accuracy", "macro_f1", "exact_match", "bleu", "rouge_l", "invalid_rate"]


class AnswerFormatConfig(Section):
    """What a valid answer looks like; an answer that does not fit is `invalid`."""

    choices: list[str] = Field(default_factory=list, description="The label set.")
    regex: str | None = Field(None, description="A regular expression the answer must match.")
    json_schema: dict[str, Any] | None = Field(None, description="A JSON schema the answer meets.")

    @model_validator(mode="after")
    def _one_format(self) -> AnswerFormatConfig:
        given = [bool(self.choices), self.regex is not None, self.json_schema is not None]
        if sum(given) > 1:
            raise ValueError("give only one of choices, regex, json_schema")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a regular expression: {error}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _is_a_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as error:
                raise ValueError(f"not a JSON schema: {error.message}") from None
        return value


class TaskEval(AnswerFormatConfig):
    """How the rows of one task (multi-task data) are scored."""

    metrics: list[MetricName] = Field(
        default_factory=lambda: ["exact_match"], description="The first one is the task's headline."
    )


class GenerationConfig(Section):
    """How answers are generated to be scored (and by `predict` and `chat`)."""

    max_new_tokens: StrictInt = Field(64, ge=1, description="Longest answer, in tokens.")
    batch_size: StrictInt = Field(16, ge=1, description="Prompts generated for at once.")
    temperature: Number = Field(0.0, ge=0, description="0 decodes greedily.")
    top_p: Number = Field(1.0, gt=0, le=1, description="Nucleus sampling (with a temperature).")
    seed: StrictInt | None = Field(None, description="Seed for sampling.")
    stop: list[str] = Field(default_factory=list, description="Stop strings.")
    thinking: StrictBool = Field(
        False, description="Let Qwen3-style models think before answering."
    )
    constrain: StrictBool = Field(
        False, description="Decode within the answer format (xgrammar): no invalid outputs."
    )


class ScoringConfig(AnswerFormatConfig):
    """How generated answers are scored against the references."""

    metric: MetricName = Field(
        "exact_match",
        description="Headline metric, also used to pick the best checkpoint. `accuracy` and "
        "`macro_f1` treat the answer's first line as a label.",
    )
    metrics: list[MetricName] = Field(default_factory=list, description="More metrics to report.")
    tasks: dict[str, TaskEval] = Field(
        default_factory=dict, description="Per-task metrics and formats for multi-task data."
    )
    task_field: str = Field("task", description="The column that names a row's task.")
    lowercase: StrictBool = Field(True, description="exact_match ignores case.")
    strip_punctuation: StrictBool = Field(False, description="exact_match ignores punctuation.")


class SelectConfig(Section):
    """Choosing the best checkpoint while training: score every N steps, keep the best in
    best/, stop when scores stop improving."""

    every: StrictInt | None = Field(
        None, ge=1, description="Score the model every N training steps; the best goes to best/."
    )
    mode: Literal["max", "min"] = Field("max", description="Whether a higher metric is better.")
    patience: StrictInt | None = Field(
        None, ge=1, description="Stop training after this many scorings without improvement."
    )


class EvalConfig(Section):
    """Scoring on the val rows: after training, every `select.every` steps, `tunelab eval`."""

    generate: StrictBool = Field(True, description="task sft: generate answers and score them.")
    max_rows: StrictInt | None = Field(200, ge=1, description="Rows of the split to score.")
    compare_base: StrictBool = Field(
        False, description="Also score the base model on the same rows."
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)

    @property
    def metric(self) -> str:
        """The headline metric (``scoring.metric``)."""
        return self.scoring.metric
