"""`tunelab serve --print-vllm`: the vLLM command that serves the same runs, and what vLLM
will refuse. (vLLM needs a GPU; it cannot run on this CPU-only tool's test machines.)"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tunelab.config_file import load_config
from tunelab.models.resolve import resolve_model
from tunelab.run_dir import RunDir

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def vllm_command(named: dict[str, Path]) -> tuple[str, list[str]]:
    """The `vllm serve` command line for ``named`` runs, and warnings about them."""
    bases, modules, ranks, warnings = set(), [], [], []
    for name, path in named.items():
        run = RunDir(path)
        config = load_config(run.config)
        adapter = run.adapter_of(None)
        settings = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        bases.add(str(resolve_model(config.model)))
        modules.append(f"{name}={adapter}")
        ranks.append(int(settings.get("r", 8)))
        if settings.get("modules_to_save"):
            warnings.append(
                f"{name}: trains {settings['modules_to_save']} in full (modules_to_save); vLLM's "
                "LoRA does not load such adapters: serve it with tunelab serve, or merge it"
            )
    if len(bases) > 1:
        warnings.append(f"the runs have different bases ({sorted(bases)}); vLLM serves one")
    rank = next((r for r in VLLM_RANKS if r >= max(ranks)), max(ranks))
    parts = ["vllm", "serve", sorted(bases)[0], "--enable-lora", "--lora-modules", *modules]
    parts += ["--max-lora-rank", str(rank), "--max-loras", str(len(modules))]
    return " ".join(shlex.quote(p) for p in parts), warnings
