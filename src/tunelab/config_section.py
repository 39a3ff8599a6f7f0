"""What every config group shares: unknown keys are errors, and strict numbers."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# a number from YAML (`1e-4` included, which YAML reads as text), never true/false
Number = Annotated[float, BeforeValidator(_not_a_boolean)]


class Section(BaseModel):
    """A config group: unknown keys are errors, values are validated on assignment too.

    Types are strict where it matters: `true` is not the number 1 nor `"yes"` a boolean
    (``trust_remote_code`` is a security switch), and no number may be infinite or NaN.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
