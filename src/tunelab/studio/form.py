"""The new-run form, generated from the config's pydantic models, and its values read back
the way `tunelab train --set key=value` reads them (YAML values, the same validation and
the same messages)."""

from __future__ import annotations

import re
import types
import typing
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tunelab.config import RunConfig
from tunelab.config_file import apply_override
from tunelab.errors import TunelabError

# keys the studio sets itself; everything else in the config is on the form
SET_BY_STUDIO = {"output_dir"}
ERROR_LINE = re.compile(r"^\s+([\w.]+): (.*)$")


def form_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[dict[str, Any]]:
    """Every config key as a form field: dotted key, kind, choices, default, description."""
    fields: list[dict[str, Any]] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        if key in SET_BY_STUDIO:
            continue
        annotation = _without_none(info.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields += form_fields(annotation, f"{key}.")
            continue
        fields.append(
            {
                "key": key,
                "section": key.split(".")[0] if "." in key else "run",
                "kind": _kind(annotation),
                "choices": _choices(annotation),
                "default": _default(info),
                "description": info.description or "",
            }
        )
    return fields


def raw_config(values: dict[str, Any]) -> dict[str, Any]:
    """The form's ``key: text`` pairs as a config mapping; empty fields keep their default."""
    raw: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or key in SET_BY_STUDIO:
            raise TunelabError(f"{key}: not a field of the form")
        text = value if isinstance(value, str) else _as_yaml(value)
        if text.strip() == "":
            continue
        apply_override(raw, f"{key}={text}")
    return raw


def field_errors(message: str) -> dict[str, str]:
    """The CLI's config error message split by key, for the fields to show."""
    found = {}
    for line in message.splitlines():
        match = ERROR_LINE.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def _as_yaml(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _without_none(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _kind(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal or (
        isinstance(annotation, type) and issubclass(annotation, Enum)
    ):
        return "choice"
    if annotation is bool:
        return "boolean"
    if annotation in (int, float):
        return "number"
    if typing.get_origin(annotation) in (list, tuple, dict):
        return "yaml"
    return "text"


def _choices(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [member.value for member in annotation]
    return []


def _default(info: Any) -> Any:
    if info.default is not PydanticUndefined:
        default = info.default
    elif info.default_factory is not None:
        default = info.default_factory()
    else:
        return None
    if default is None or isinstance(default, Enum):
        return getattr(default, "value", None)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json")
    return default if isinstance(default, str | int | float | bool | list | dict) else str(default)
