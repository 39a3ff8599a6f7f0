"""The OpenAI-compatible endpoints: chat completions, completions, and tunelab's classify.

A chat is rendered with the run's own chat template by the same code as `tunelab predict`
(``encode_prompt``), and decoded by the engine; each of the ``n`` choices is one request in
the engine's batch.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunelab.data.encode import encode_prompt
from tunelab.generate import AnswerFormat
from tunelab.use.serve.engine import Finished, Job, Piece, QueueFull, Sampling
from tunelab.use.serve.models import Served
from tunelab.use.serve.schemas import ChatRequest, ClassifyRequest, CompletionRequest
from tunelab.use.serve.state import APIError, ServerState

router = APIRouter()
DISCONNECT_POLL_S = 0.25


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    """OpenAI's chat completions."""
    state, served = _model(request, body.model, generates=True)
    try:
        chat = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
    except ValueError as error:
        raise APIError(400, f"messages: {error}", param="messages") from None
    thinking = served.opened.config.eval.generation.thinking
    prompt = encode_prompt(served.opened.tokenizer, chat, thinking)
    top = (body.top_logprobs or 0) if body.logprobs else None
    grammar = _grammar(served, body.response_format)
    call = _Call(state, served, "chat.completion", body.stream, body.stream_options)
    sampling = _sampling(served, body, body.budget(), top, grammar)
    return await call.run(request, [prompt], sampling, body.n)


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    """OpenAI's (legacy) completions, for raw prompts."""
    state, served = _model(request, body.model, generates=True)
    tokenizer = served.opened.tokenizer
    prompts = [tokenizer(text)["input_ids"] for text in body.prompts()]
    sampling = _sampling(served, body, body.max_tokens, body.logprobs, None)
    call = _Call(state, served, "text_completion", body.stream, body.stream_options)
    return await call.run(request, prompts, sampling, body.n)


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
    """tunelab's extension: a label and every label's probability per text (class heads)."""
    state, served = _model(request, body.model, generates=False)
    texts = body.texts()
    tokenizer, max_length = served.opened.tokenizer, served.opened.config.data.max_length

    def run() -> list[dict[str, float]]:
        with served.lock:
            return served.opened.classify(texts)

    probabilities = await asyncio.to_thread(run)
    tokens = sum(min(len(tokenizer(text)["input_ids"]), max_length) for text in texts)
    state.metrics.count_tokens(served.id, tokens, 0)
    data = [
        {"index": i, "label": max(p, key=p.__getitem__), "probabilities": p}
        for i, p in enumerate(probabilities)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "model": served.id, "data": data, "usage": usage}


def _model(request: Request, name: str, generates: bool) -> tuple[ServerState, Served]:
    state: ServerState = request.app.state.tunelab
    served = state.served.get(name)
    if served is None:
        known = ", ".join(state.served)
        raise APIError(
            404,
            f"model {name!r} is not served; models: {known}",
            param="model",
            code="model_not_found",
        )
    if generates and served.classifies:
        raise APIError(400, f"model {name!r} is a class head: use /v1/classify", param="model")
    if not generates and not served.classifies:
        raise APIError(400, f"model {name!r} generates text: use /v1/chat/completions")
    return state, served


def _grammar(served: Served, response_format: Any) -> Any:
    if response_format is None or response_format.type == "text":
        return None
    kind = response_format.type
    if kind == "json_object":
        answer = AnswerFormat(json_schema=json.dumps({"type": "object"}))
    elif kind == "json_schema":
        schema = response_format.json_schema["schema"]
        answer = AnswerFormat(json_schema=json.dumps(schema, ensure_ascii=False))
    elif kind == "choice":
        answer = AnswerFormat(choices=tuple(response_format.choices))
    else:
        answer = AnswerFormat(regex=response_format.regex)
    try:
        return served.grammars.compiled_for(answer)
    except Exception as error:  # xgrammar raises its own types for a schema it cannot compile
        raise APIError(400, f"response_format: {error}", param="response_format") from None


def _sampling(served: Served, body: Any, budget: int | None, top: int | None, grammar: Any):
    settings = served.opened.config.eval.generation
    return Sampling(
        max_new_tokens=budget or settings.max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stops(),
        top_logprobs=top,
        grammar=grammar,
    )


class _Call:
    """One API call: its requests in the engine, and the answer, whole or streamed."""

    def __init__(
        self, state: ServerState, served: Served, kind: str, stream: bool, options: Any
    ) -> None:
        self.state, self.served, self.kind, self.stream = state, served, kind, stream
        self.usage_in_stream = bool(options and options.include_usage)
        self.id = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.jobs: list[Job] = []
        self.events: list[asyncio.Queue[Any]] = []

    async def run(
        self, request: Request, prompts: list[list[int]], sampling: Sampling, n: int
    ) -> Any:
        """Submit ``n`` requests per prompt; answer when they finish, or stream them."""
        self._check_length(prompts)
        loop = asyncio.get_running_loop()
        for prompt in prompts:
            for choice in range(n):
                seed = None if sampling.seed is None else sampling.seed + choice
                events: asyncio.Queue[Any] = asyncio.Queue()
                emit = _emitter(loop, events)
                self.jobs.append(Job(prompt, _with_seed(sampling, seed), emit))
                self.events.append(events)
        self._submit()
        self.state.in_flight += 1
        if self.stream:
            return StreamingResponse(self._streamed(), media_type="text/event-stream")
        try:
            return await self._whole(request)
        finally:
            self.state.in_flight -= 1

    def _check_length(self, prompts: list[list[int]]) -> None:
        context = self.served.engine.context
        longest = max(len(p) for p in prompts)
        if context is not None and longest >= context:
            raise APIError(
                400,
                f"the prompt has {longest} tokens; the model's context is {context}",
                param="messages",
                code="context_length_exceeded",
            )

    def _submit(self) -> None:
        try:
            for job in self.jobs:
                self.served.engine.submit(job)
        except QueueFull:
            for job in self.jobs:
                job.cancel()
            raise APIError(
                429,
                "too many requests are waiting; retry shortly",
                "rate_limit_error",
                headers={"Retry-After": "1"},
            ) from None

    async def _whole(self, request: Request) -> dict[str, Any]:
        finals: list[Finished] = []
        pieces: list[list[Piece]] = []
        for events in self.events:
            got, final = await self._drain(request, events)
            pieces.append(got)
            finals.append(final)
        choices = [
            self._choice(i, f, p) for i, (f, p) in enumerate(zip(finals, pieces, strict=True))
        ]
        return {
            "id": self.id,
            "object": self.kind,
            "created": self.created,
            "model": self.served.id,
            "choices": choices,
            "usage": self._usage(finals),
        }

    async def _drain(self, request: Request, events: asyncio.Queue) -> tuple[list, Finished]:
        """All of one request's pieces and its end; cancels everything if the client leaves."""
        got = []
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    self._cancel()
                continue
            if isinstance(event, Finished):
                self._fail_if_broken(event)
                return got, event
            got.append(event)

    def _fail_if_broken(self, final: Finished) -> None:
        if final.reason == "error":
            raise APIError(500, f"decoding failed: {final.error}", "server_error")

    async def _streamed(self) -> AsyncIterator[str]:
        finals: list[Finished | None] = [None] * len(self.jobs)
        try:
            if self.kind == "chat.completion":
                for index in range(len(self.jobs)):
                    yield self._sse(self._delta_chunk(index, {"role": "assistant", "content": ""}))
            pending = {asyncio.ensure_future(q.get()): i for i, q in enumerate(self.events)}
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    event = future.result()
                    if isinstance(event, Finished):
                        finals[index] = event
                        yield self._sse(self._end_chunk(index, event))
                        continue
                    if event.text or event.logprob is not None:
                        yield self._sse(self._piece_chunk(index, event))
                    pending[asyncio.ensure_future(self.events[index].get())] = index
            if self.usage_in_stream:
                yield self._sse(self._usage_chunk([f for f in finals if f is not None]))
            yield "data: [DONE]\n\n"
        finally:
            self._cancel()  # a client that went away stops its requests
            self.state.in_flight -= 1

    def _cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    def _choice(self, index: int, final: Finished, pieces: list[Piece]) -> dict[str, Any]:
        reason = "length" if final.reason == "length" else "stop"
        if self.kind == "chat.completion":
            choice = {
                "index": index,
                "message": {"role": "assistant", "content": final.text},
                "finish_reason": reason,
                "logprobs": self._chat_logprobs(pieces),
            }
        else:
            choice = {
                "index": index,
                "text": final.text,
                "finish_reason": reason,
                "logprobs": self._completion_logprobs(pieces),
            }
        return choice

    def _chat_logprobs(self, pieces: list[Piece]) -> dict[str, Any] | None:
        if self.jobs[0].sampling.top_logprobs is None:
            return None
        return {"content": [self._token_entry(p) for p in pieces if p.token >= 0]}

    def _completion_logprobs(self, pieces: list[Piece]) -> dict[str, Any] | None:
        if self.jobs[0].sampling.top_logprobs is None:
            return None
        scored = [p for p in pieces if p.token >= 0]
        return {
            "tokens": [self._token_text(p.token) for p in scored],
            "token_logprobs": [p.logprob for p in scored],
            "top_logprobs": [{self._token_text(t): lp for t, lp in p.top} for p in scored],
        }

    def _token_entry(self, piece: Piece) -> dict[str, Any]:
        text = self._token_text(piece.token)
        return {
            "token": text,
            "logprob": piece.logprob,
            "bytes": list(text.encode("utf-8", "replace")),
            "top_logprobs": [
                {
                    "token": self._token_text(token),
                    "logprob": logprob,
                    "bytes": list(self._token_text(token).encode("utf-8", "replace")),
                }
                for token, logprob in piece.top
            ],
        }

    def _token_text(self, token: int) -> str:
        return self.served.opened.tokenizer.decode([token])

    def _usage(self, finals: list[Finished]) -> dict[str, int]:
        prompts = {id(job.prompt): len(job.prompt) for job in self.jobs}
        prompt = sum(prompts.values())
        completion = sum(f.completion_tokens for f in finals)
        self.state.metrics.count_tokens(self.served.id, prompt, completion)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _delta_chunk(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        return self._chunk(
            [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]
        )

    def _piece_chunk(self, index: int, piece: Piece) -> dict[str, Any]:
        logprobs = None
        if piece.logprob is not None and piece.token >= 0:
            logprobs = {"content": [self._token_entry(piece)]}
        if self.kind == "chat.completion":
            choice = {"index": index, "delta": {"content": piece.text}, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": piece.text, "logprobs": None}
        return self._chunk([{**choice, "finish_reason": None}])

    def _end_chunk(self, index: int, final: Finished) -> dict[str, Any]:
        reason = "length" if final.reason == "length" else "stop"
        if self.kind == "chat.completion":
            choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": reason}
        return self._chunk([choice])

    def _usage_chunk(self, finals: list[Finished]) -> dict[str, Any]:
        return {**self._chunk([]), "usage": self._usage(finals)}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.served.id,
            "choices": choices,
        }

    @staticmethod
    def _sse(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _emitter(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Any:
    def emit(event: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    return emit


def _with_seed(sampling: Sampling, seed: int | None) -> Sampling:
    from dataclasses import replace

    return replace(sampling, seed=seed)
