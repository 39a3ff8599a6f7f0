"""`tunelab export`: a run as one GGUF file for llama.cpp (and a Modelfile for Ollama),
checked by loading it back before it is reported."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.models.gguf_export import DTYPES, gguf_architecture, write_gguf
from tunelab.models.modelfile import modelfile, stop_strings, turn_pieces
from tunelab.use.open import open_run

FORMATS = ("gguf", "ollama")
# the relative error of one stored weight: f16 and bf16 round to 11 and 8 significant bits,
# q8_0 to a 1/127 step of its block's largest value (half a step at most: 1/254)
UNIT_ERROR = {"f16": 2.0**-11, "bf16": 2.0**-8, "q8_0": 1 / 254}
# logits move by the weights' relative error times a growth through the layers; measured on
# the embedded SmolLM2 (30 layers): 0.56 (f16), 0.46 (bf16), 1.56 (q8_0) x u x sqrt(layers)
GROWTH = 8.0
PROBE_TEXTS = (
    "今天天气很好，我们去公园散步吧。",
    "The quick brown fox jumps over the lazy dog.",
    "  a\n\n\tb   c  \n",
)


def export_run(
    run_root: Path,
    output: Path,
    fmt: str = "gguf",
    dtype: str = "f16",
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Write the run's merged model to ``output`` (a .gguf file; for ollama a Modelfile
    beside it) and check it by loading it back with transformers."""
    if fmt not in FORMATS:
        raise TunelabError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise TunelabError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    opened = open_run(run_root, checkpoint, precision="fp32")
    if not opened.task.has_base_model:
        raise TunelabError(
            "a class-head run cannot be exported to GGUF: llama.cpp and Ollama serve language "
            "models, not classification heads. Serve it with `tunelab serve` (its /v1/classify) "
            "or fold the adapter in with `tunelab merge` for transformers"
        )
    gguf_architecture(opened.model.config)  # refuse before any work
    thinking = opened.config.eval.generation.thinking
    pieces = turn_pieces(opened.tokenizer, thinking) if fmt == "ollama" else None
    model = opened.model.merge_and_unload() if opened.adapter is not None else opened.model
    model.eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    template = opened.tokenizer.chat_template or ""
    summary = write_gguf(model, opened.tokenizer, output, dtype, template, opened.run.root.name)
    report: dict[str, Any] = {**vars(summary), **check_gguf(model, opened.tokenizer, output, dtype)}
    if pieces is not None:
        target = output.with_name("Modelfile")
        target.write_text(
            modelfile(output.name, pieces, stop_strings(opened.tokenizer, pieces)), encoding="utf-8"
        )
        report["modelfile"] = str(target)
    return report


def gguf_tolerance(dtype: str, layers: int) -> float:
    """The largest logit difference allowed, relative to the largest logit."""
    return GROWTH * UNIT_ERROR[dtype] * math.sqrt(layers)


def check_gguf(model: Any, tokenizer: Any, path: Path, dtype: str) -> dict[str, Any]:
    """Load the file back with transformers: its logits on probe texts must equal the merged
    model's within the dtype's tolerance, its tokenizer must encode them to the same ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers' GGUF reader ignores attention.key_length (llama.cpp reads it) and assumes
    # Qwen3's default head_dim of 128: give it the model's
    extra = {"head_dim": model.config.head_dim} if getattr(model.config, "head_dim", None) else {}
    loaded = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, **extra
    )
    carried = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    differing = [
        text
        for text in PROBE_TEXTS
        if carried(text, add_special_tokens=False)["input_ids"]
        != tokenizer(text, add_special_tokens=False)["input_ids"]
    ]
    if differing:
        raise TunelabError(f"{path}: the tokenizer it carries encodes {differing[0]!r} differently")
    ids = torch.tensor([tokenizer(" ".join(PROBE_TEXTS), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = model(ids).logits
        got = loaded(ids).logits
    relative = ((got - expected).abs().max() / expected.abs().max()).item()
    allowed = gguf_tolerance(dtype, model.config.num_hidden_layers)
    if not relative <= allowed:
        raise TunelabError(
            f"{path}: loaded back, its logits differ from the merged model's by {relative:.2e} of "
            f"the largest logit (> {allowed:.1e} allowed for {dtype})"
        )
    same_top = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    return {"relative_logit_difference": relative, "allowed": allowed, "same_top_token": same_top}
