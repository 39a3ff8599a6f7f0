"""The decoding engine behind `tunelab serve`: one thread per served model that decodes every
waiting request together, one token per step for the whole batch.

Each request keeps its own token budget, stop strings, sampling settings (temperature, top-p,
seed), answer grammar and log-probabilities; a request that finishes or is cancelled leaves
the batch at once, and requests that arrive while a batch runs join it between two steps
(their prompts are prefilled, and the key/value caches are left-padded to one length).

Why not transformers' ``ContinuousBatchingManager``: it runs on a CPU and with PEFT
adapters, but takes one sampling configuration for all requests and has no per-request
logits processor, so grammar-constrained answers, per-request temperature/top-p/seed and
top-k log-probabilities cannot go through it. The steps here are the same forward calls
``model.generate`` makes (left-padded prefill, then one token per step on a ``DynamicCache``,
logits of the last position only), so a request decoded alone answers exactly as
``tunelab predict`` does.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

STOPPING = object()  # put on the queue to end the engine thread


@dataclass
class Sampling:
    """How one request is decoded."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no log-probabilities; 0: the chosen token's only
    grammar: Any = None  # an xgrammar CompiledGrammar


@dataclass
class Piece:
    """One decoded token: its id, the text it completes (may be empty while a character or
    a possible stop string is incomplete), and its log-probabilities when asked for."""

    token: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Finished:
    """The end of a request: why it ended, its whole text and how many tokens it took."""

    reason: str  # stop | length | cancelled | error
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class QueueFull(Exception):
    """More requests wait than the engine admits."""


class Job:
    """One request in the engine: its prompt, settings, and where its events go."""

    def __init__(self, prompt: list[int], sampling: Sampling, emit: Callable[[Any], None]):
        self.prompt = prompt
        self.sampling = sampling
        self.emit = emit  # called from the engine thread with each Piece, then a Finished
        self.cancelled = threading.Event()
        self.tokens: list[int] = []
        self.shown = ""  # text already emitted
        self.generator = torch.Generator().manual_seed(
            sampling.seed if sampling.seed is not None else int(time.time_ns() % 2**63)
        )
        self.matcher: Any = None

    def cancel(self) -> None:
        """Stop decoding this request at the next step (a client that went away)."""
        self.cancelled.set()


class Engine:
    """Decodes the jobs submitted to it, batched, on its own thread."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 16, max_queue: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.waiting: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.stop_ids = _stop_ids(model, tokenizer)
        self.vocab_size = model.config.vocab_size
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.device = next(model.parameters()).device
        self.backlog: list[Job] = []  # taken from the queue while the batch was full
        self.active = 0  # requests in the running batch
        self.thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)
        self.thread.start()

    @property
    def queued(self) -> int:
        """Requests waiting to join the batch."""
        return self.waiting.qsize()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises QueueFull when the queue is at its limit."""
        try:
            self.waiting.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    def close(self) -> None:
        """End the engine thread once the running batch is done."""
        self.waiting.put(STOPPING)
        self.thread.join(timeout=60)

    def _loop(self) -> None:
        batch: Batch | None = None
        while True:
            arrivals = self._take(block=batch is None)
            if arrivals is None:
                return
            with torch.no_grad():
                try:
                    batch = self._admit(batch, arrivals) if arrivals else batch
                    if batch is not None:
                        batch = self._step(batch)
                    self.active = len(batch.jobs) if batch else 0
                except Exception as error:  # a failed step fails its requests, not the server
                    jobs = (batch.jobs if batch else []) + arrivals
                    for job in jobs:
                        self._finish(job, "error", str(error))
                    batch, self.active = None, 0

    def _take(self, block: bool) -> list[Job] | None:
        """Waiting jobs (at least one when ``block``); None once asked to stop."""
        taken, self.backlog = self.backlog, []
        if taken:
            block = False
        try:
            first = self.waiting.get(block=block, timeout=None if block else 0)
        except queue.Empty:
            return taken
        if first is STOPPING:
            if block:  # idle: nothing running, nothing waiting
                return None
            self.waiting.put(STOPPING)  # after the running requests finish
            return taken
        taken.append(first)
        time.sleep(0.002)  # requests sent together arrive within a moment: batch them
        while len(taken) < self.max_batch:
            try:
                item = self.waiting.get_nowait()
            except queue.Empty:
                break
            if item is STOPPING:
                self.waiting.put(STOPPING)
                break
            taken.append(item)
        return taken

    def _admit(self, batch: Batch | None, jobs: list[Job]) -> Batch | None:
        """Prefill the new jobs' prompts and merge them into the running batch."""
        room = self.max_batch - (len(batch.jobs) if batch else 0)
        self.backlog = jobs[room:]  # first in line once rows free up
        for job in jobs[:room]:
            if job.cancelled.is_set():
                self._finish(job, "cancelled")
        jobs = [job for job in jobs[:room] if not job.cancelled.is_set()]
        if not jobs:
            return batch
        fresh = self._prefill(jobs)
        if batch is None:
            return fresh
        return batch.merged(fresh)

    def _prefill(self, jobs: list[Job]) -> Batch:
        width = max(len(job.prompt) for job in jobs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.prompt) :] = torch.tensor(job.prompt)
            mask[row, width - len(job.prompt) :] = 1
        from transformers import DynamicCache

        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self._forward(ids, mask, positions, cache)
        batch = Batch(jobs, mask, cache)
        batch.next_tokens = self._choose(batch, logits)
        return batch

    def _step(self, batch: Batch) -> Batch | None:
        """Hand out the last chosen tokens, drop finished jobs, decode the next token."""
        keep = [i for i, job in enumerate(batch.jobs) if self._deliver(job, batch.next_tokens[i])]
        if not keep:
            return None
        if len(keep) < len(batch.jobs):
            batch.select(keep)
        batch.mask = torch.cat([batch.mask, torch.ones((len(batch.jobs), 1), dtype=torch.long)], 1)
        positions = batch.mask.sum(-1, keepdim=True) - 1
        ids = torch.tensor([[job.tokens[-1]] for job in batch.jobs])
        logits = self._forward(ids, batch.mask, positions, batch.cache)
        batch.next_tokens = self._choose(batch, logits)
        return batch

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def _choose(self, batch: Batch, logits: torch.Tensor) -> list[tuple[int, Piece]]:
        """Each job's next token (constrained by its grammar, sampled or greedy)."""
        chosen = []
        for row, job in enumerate(batch.jobs):
            scores = logits[row : row + 1]
            if job.sampling.grammar is not None:
                scores = self._constrained(job, scores.clone())
            token = _pick(scores[0], job)
            chosen.append((token, self._piece(job, logits[row], token)))
        return chosen

    def _constrained(self, job: Job, scores: torch.Tensor) -> torch.Tensor:
        import xgrammar as xgr

        if job.matcher is None:
            job.matcher = xgr.GrammarMatcher(job.sampling.grammar)
        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        job.matcher.fill_next_token_bitmask(bitmask, 0)
        xgr.apply_token_bitmask_inplace(scores, bitmask, vocab_size=self.vocab_size)
        return scores

    def _piece(self, job: Job, logits: torch.Tensor, token: int) -> Piece:
        wanted = job.sampling.top_logprobs
        if wanted is None:
            return Piece(token, "")
        logprobs = logits.log_softmax(-1)
        top = torch.topk(logprobs, wanted) if wanted else None
        pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else []
        return Piece(token, "", float(logprobs[token]), pairs)

    def _deliver(self, job: Job, chosen: tuple[int, Piece]) -> bool:
        """Record and emit a job's new token; returns whether the job goes on."""
        token, piece = chosen
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
            return False
        job.tokens.append(token)
        if job.matcher is not None:
            job.matcher.accept_token(token)
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        cut = _first_stop(text, job.sampling.stop)
        ended = token in self.stop_ids or (job.matcher is not None and job.matcher.is_terminated())
        if cut is not None or ended:
            self._emit_text(job, piece, text[:cut] if cut is not None else text, final=True)
            self._finish(job, "stop")
            return False
        self._emit_text(job, piece, text, final=False)
        if len(job.tokens) >= self._budget(job):
            self._emit_text(job, None, text, final=True)
            self._finish(job, "length")
            return False
        return True

    def _budget(self, job: Job) -> int:
        if self.context is None:
            return job.sampling.max_new_tokens
        return min(job.sampling.max_new_tokens, self.context - len(job.prompt))

    def _emit_text(self, job: Job, piece: Piece | None, text: str, final: bool) -> None:
        """Emit the text that is settled: not an incomplete character, and (before the end)
        not the start of a stop string."""
        settled = text.rstrip("\ufffd") if final else _settled(text, job.sampling.stop)
        delta = settled[len(job.shown) :] if settled.startswith(job.shown) else ""
        job.shown += delta
        if piece is not None:
            piece.text = delta
            job.emit(piece)
        elif delta:
            job.emit(Piece(-1, delta))

    def _finish(self, job: Job, reason: str, error: str | None = None) -> None:
        job.emit(Finished(reason, job.shown, len(job.prompt), len(job.tokens), error))


class Batch:
    """The running requests, their attention mask and their shared key/value cache."""

    def __init__(self, jobs: list[Job], mask: torch.Tensor, cache: Any) -> None:
        self.jobs = jobs
        self.mask = mask
        self.cache = cache
        self.next_tokens: list[tuple[int, Piece]] = []

    def select(self, rows: list[int]) -> None:
        """Keep only ``rows`` (finished requests leave the batch)."""
        index = torch.tensor(rows, dtype=torch.long)
        self.jobs = [self.jobs[i] for i in rows]
        self.mask = self.mask[index]
        self.next_tokens = [self.next_tokens[i] for i in rows]
        self.cache.batch_select_indices(index.to(_cache_device(self.cache)))

    def merged(self, other: Batch) -> Batch:
        """This batch and ``other`` as one: the shorter one left-padded to the other's
        length (padding is masked out, so no row's result changes)."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat(
                [_left_pad(mine.values, width), _left_pad(theirs.values, width)]
            )
        mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(other.mask, width, 1)])
        batch = Batch(self.jobs + other.jobs, mask, self.cache)
        batch.next_tokens = self.next_tokens + other.next_tokens
        return batch


def _left_pad(tensor: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _cache_device(cache: Any) -> torch.device:
    layer = cache.layers[0]
    return layer.keys.device if getattr(layer, "keys", None) is not None else torch.device("cpu")


def _pick(scores: torch.Tensor, job: Job) -> int:
    """Greedy at temperature 0; else a draw from the top-p share of the tempered
    distribution, with the job's own generator."""
    if job.sampling.temperature <= 0:
        return int(scores.argmax())
    probs = (scores / job.sampling.temperature).softmax(-1)
    if job.sampling.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(-1) - ordered > job.sampling.top_p
        probs = probs.scatter(0, order, ordered.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs, 1, generator=job.generator))


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer, as ``model.generate`` takes them."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in [*ids, tokenizer.eos_token_id] if i is not None}


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in ``text``, or None.

    >>> _first_stop("答案是 5。\\n问题", ("\\n",))
    6
    """
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _settled(text: str, stops: tuple[str, ...]) -> str:
    """``text`` without a trailing incomplete character or a tail that may begin a stop
    string.

    >>> _settled("好的\\ufffd", ())
    '好的'
    >>> _settled("answer: 4\\nQ", ("\\nQuestion",))
    'answer: 4'
    """
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return text[: len(text) - hold]
