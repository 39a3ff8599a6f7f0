"""`tunelab merge`: a run's adapter folded into its base, as a plain transformers directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.models.export import save_merged
from tunelab.use.open import open_run


def merge_run(run_root: Path, output: Path, checkpoint: str | None = None) -> dict[str, Any]:
    """Merge the run's adapter (final, `best` or a step) into its base model at ``output``."""
    opened = open_run(run_root, checkpoint, precision="fp32")
    difference = save_merged(opened.model, opened.tokenizer, output)
    base = opened.config.model.name
    return {"output": str(output), "max_logit_difference": difference, "base": base}
