"""Request bodies of the OpenAI-compatible API, with OpenAI's field names, validated.

Fields OpenAI has and tunelab does not implement are refused with a 400 that names them
(`tools`, a non-zero `frequency_penalty` ...), never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

MAX_TOP_LOGPROBS = 20
MAX_N = 16
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "audio")


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    def text(self) -> str:
        """The content as text (OpenAI text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ResponseFormat(BaseModel):
    """`text`, `json_object`, `json_schema` (OpenAI), or tunelab's `choice` / `regex`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema", "choice", "regex"]
    json_schema: dict[str, Any] | None = None
    choices: list[str] | None = Field(None, min_length=1)
    regex: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ResponseFormat:
        needs = {"json_schema": self.json_schema, "choice": self.choices, "regex": self.regex}
        if self.type in needs and not needs[self.type]:
            field = "choices" if self.type == "choice" else self.type
            raise ValueError(f"response_format of type {self.type} needs `{field}`")
        if self.type == "json_schema" and not isinstance(self.json_schema.get("schema"), dict):
            raise ValueError("response_format.json_schema needs a `schema` object")
        return self


class StreamOptions(BaseModel):
    """What a stream carries beyond the deltas."""

    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class Sampled(BaseModel):
    """The decoding settings both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [key for key in UNSUPPORTED if data.get(key)]
            if given:
                raise ValueError(f"not supported by tunelab serve: {', '.join(given)}")
        return data

    @model_validator(mode="after")
    def _no_penalties(self) -> Sampled:
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported (use 0)")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 sequences")
        return self

    def stops(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatRequest(Sampled):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _logprobs_asked(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message must not be the assistant's")
        return self

    def budget(self) -> int | None:
        """max_completion_tokens, else max_tokens."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(Sampled):
    """POST /v1/completions."""

    prompt: str | list[str]
    max_tokens: StrictInt | None = Field(16, ge=1)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: StrictBool = False

    @model_validator(mode="after")
    def _one_or_more_prompts(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: give at least one")
        if self.echo:
            raise ValueError("echo is not supported")
        return self

    def prompts(self) -> list[str]:
        """The prompts as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ClassifyRequest(BaseModel):
    """POST /v1/classify (tunelab's extension): texts in, label and probabilities out."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str]

    @model_validator(mode="after")
    def _some_text(self) -> ClassifyRequest:
        if isinstance(self.input, list) and not self.input:
            raise ValueError("input: give at least one text")
        return self

    def texts(self) -> list[str]:
        """The texts as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)
