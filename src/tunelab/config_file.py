"""The run config file: YAML read, --set overrides applied, relative paths anchored, moved
keys moved, and every error reported at once with its key."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunelab.config import RunConfig, Section
from tunelab.config_keys import RenamedKeyWarning, move_renamed_keys, nearest_key
from tunelab.errors import TunelabError
from tunelab.run_dir import default_name


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; relative data paths follow the file.

    Args:
        path: the YAML file, or None for a config made of overrides alone.
        overrides: ``key.path=value`` strings; values are parsed as YAML.

    Raises:
        TunelabError: listing every problem at once, each with its key path.
    """
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        source = str(path)
        raw = _read_yaml(path)
    for override in overrides or []:
        apply_override(raw, override)
    if path is not None:
        raw.setdefault("name", default_name(path.stem))
        _anchor_data_paths(raw, path.parent)
    return validate_config(raw, source)


def plain_config(model: str, overrides: Sequence[str] = ()) -> RunConfig:
    """The default settings to use ``model`` outside a run (no training data)."""
    raw: dict[str, Any] = {"model": {"name": model}, "data": {"train": ["(none)"]}}
    for override in overrides:
        apply_override(raw, override)
    config = validate_config(raw, "--set")
    config.data.train = []
    return config


def validate_config(raw: dict[str, Any], source: str) -> RunConfig:
    """Validate a raw mapping, turning pydantic's errors into one readable message.

    Keys that moved in this release are moved to their new place, with a warning.
    """
    moved = move_renamed_keys(raw)
    if moved:
        warnings.warn(f"{source}: {'; '.join(moved)}", RenamedKeyWarning, stacklevel=2)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        lines = [_describe_error(e) for e in error.errors()]
        raise TunelabError(
            f"{source}: {len(lines)} config error(s):\n" + "\n".join(lines)
        ) from None


def validate_options(section: type[Section], values: dict[str, Any]) -> Any:
    """A config section from command-line options; errors name the options (``--max-length``)."""
    try:
        return section.model_validate(values)
    except ValidationError as error:
        lines = [
            f"  --{str(e['loc'][0]).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')}"
            f" (got {e.get('input')!r})"
            for e in error.errors()
        ]
        raise TunelabError("invalid option(s):\n" + "\n".join(lines)) from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, every default spelled out."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TunelabError(f"{path}: config file not found")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise TunelabError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except ValueError as error:
        raise TunelabError(f"{path}: {error}") from None
    if not isinstance(raw, dict):
        raise TunelabError(f"{path}: expected a mapping of keys at the top level")
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise TunelabError(f"--set {override!r}: expected key.path=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if isinstance(child, str) and part == "model":  # `model: name` shorthand
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise TunelabError(f"--set {key}: {part!r} is not a group of keys")
        node = child
    try:
        node[leaf] = parse_yaml(text) if text.strip() else None
    except ValueError as error:
        raise TunelabError(f"--set {key}: {error}") from None


def parse_yaml(text: str) -> Any:
    """YAML's plain data (no tags that build objects); any failure is a ValueError."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {error}") from None
    except RecursionError:
        raise ValueError("not valid YAML: nested too deeply") from None


def _anchor_data_paths(raw: dict[str, Any], base: Path) -> None:
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for key in ("train", "val"):
        value = data.get(key)
        if isinstance(value, str):
            data[key] = str(_anchor(value, base))
        elif isinstance(value, list):
            data[key] = [str(_anchor(v, base)) if isinstance(v, str) else v for v in value]


def _anchor(value: str, base: Path) -> Path:
    """Absolute, so the resolved config in a run directory works from anywhere."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _describe_error(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"] if not str(part).startswith("function-")]
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"  {key}: unknown key{nearest_key(RunConfig, loc)}"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:
        return f"  {message}"
    return f"  {key}: {message} (got {error.get('input')!r})"
