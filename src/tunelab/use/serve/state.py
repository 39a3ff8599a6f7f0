"""What the server's handlers share: settings, state, and the error they answer with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from tunelab.use.serve.metrics import ServeMetrics
from tunelab.use.serve.models import Served


@dataclass
class Settings:
    """How the server behaves."""

    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 2**20


@dataclass
class ServerState:
    """What the handlers share: the models, whether the server drains, what is in flight."""

    served: dict[str, Served]
    settings: Settings
    metrics: ServeMetrics
    draining: bool = False
    in_flight: int = 0


class APIError(Exception):
    """An error answered as OpenAI answers it: a status and an error object."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.extra = status, message, kind, extra
        self.headers = headers

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        body = {"error": {"message": self.message, "type": self.kind, **self.extra}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)
