"""Prometheus metrics of `tunelab serve`: requests, tokens, queue depth, latency."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServeMetrics:
    """The server's counters, in a registry of their own."""

    def __init__(self, served: dict[str, Any]) -> None:
        self.served = served
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tunelab_requests", "HTTP requests to /v1", ["path", "status"], registry=self.registry
        )
        self.tokens = Counter(
            "tunelab_tokens", "Tokens read and written", ["model", "kind"], registry=self.registry
        )
        self.latency = Histogram(
            "tunelab_request_seconds",
            "Time from request to response (to the last byte for non-streamed answers)",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Gauge(
            "tunelab_queue_depth",
            "Requests waiting to join a batch",
            ["model"],
            registry=self.registry,
        )
        self.running = Gauge(
            "tunelab_running_requests", "Requests being decoded", ["model"], registry=self.registry
        )

    def observe(self, path: str, status: int, started: float) -> None:
        """Count a request and its latency."""
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(time.perf_counter() - started)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        """Count a request's prompt and completion tokens."""
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "completion").inc(completion)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        for name, one in self.served.items():
            engine = getattr(one, "engine", None)
            if engine is not None:
                self.queue.labels(name).set(engine.queued)
                self.running.labels(name).set(engine.active)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
