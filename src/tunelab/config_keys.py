"""Config keys users get wrong or bring from elsewhere: keys that moved in this release
(still read, with a warning naming the new key), and names from other tools' configs
(suggested in the error)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

# old dotted key -> new dotted key; read until the next release
MOVED_KEYS = {
    "train.eval_every": "train.val_loss_every",
    "eval.every": "eval.select.every",
    "eval.mode": "eval.select.mode",
    "eval.patience": "eval.select.patience",
    **{
        f"eval.{name}": f"eval.generation.{name}"
        for name in (
            "max_new_tokens",
            "batch_size",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "thinking",
            "constrain",
        )
    },
    **{
        f"eval.{name}": f"eval.scoring.{name}"
        for name in (
            "metric",
            "metrics",
            "choices",
            "regex",
            "json_schema",
            "tasks",
            "task_field",
            "lowercase",
            "strip_punctuation",
        )
    },
}


class RenamedKeyWarning(FutureWarning):
    """A config key that moved; the old name still works for one release."""


def move_renamed_keys(raw: dict[str, Any]) -> list[str]:
    """Move every old key of ``raw`` (a raw config mapping) to its new place, in place;
    returns one notice per key moved (the last says how long old keys work). A key given
    under both names is left for validation to reject."""
    notices = []
    for old, new in MOVED_KEYS.items():
        *old_parents, old_leaf = old.split(".")
        section = _section(raw, old_parents)
        if section is None or old_leaf not in section:
            continue
        *new_parents, new_leaf = new.split(".")
        target = _section(raw, new_parents, create=True)
        if target is None or new_leaf in target:
            continue
        target[new_leaf] = section.pop(old_leaf)
        notices.append(f"`{old}` is now `{new}`")
    if notices:
        notices[-1] += "; the old keys work until the next release"
    return notices


def _section(raw: dict[str, Any], path: list[str], create: bool = False) -> dict | None:
    node: Any = raw
    for part in path:
        if not isinstance(node, dict):
            return None
        if create and part not in node:
            node[part] = {}
        node = node.get(part)
    return node if isinstance(node, dict) else None


# names that users bring from transformers / LLaMA-Factory configs
KEY_ALIASES = {
    "lr": "learning_rate",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "cutoff_len": "max_length",
    "model_name_or_path": "name",
    "lora_rank": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target": "target_modules",
    "bf16": "precision",
    "fp16": "precision",
}


def nearest_key(root: type[BaseModel], loc: list[str]) -> str:
    """`; did you mean 'KEY'?` for an unknown key at ``loc`` (or nothing)."""
    section: type[BaseModel] = root
    for part in loc[:-1]:
        field = section.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        section = annotation
    match = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1, cutoff=0.5)
    alias = KEY_ALIASES.get(loc[-1])
    if alias in section.model_fields:
        match = [alias]
    return f"; did you mean {'.'.join([*loc[:-1], match[0]])!r}?" if match else ""
