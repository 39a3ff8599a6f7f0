"""A model with its adapter folded in, saved as a plain transformers directory, and checked:
same logits, same chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError

# merged (W + s B A) x and unmerged W x + s B (A x) differ by rounding only: one
# reassociation per adapted product, compounded over the layers, relative to the logits'
# size (measured 4e-6 of the largest logit on the embedded SmolLM2-135M)
MERGE_TOLERANCE = 1e-4


def save_merged(model: Any, tokenizer: Any, output: Path) -> float:
    """Fold ``model``'s adapter into its base weights and save a plain transformers model
    directory with the tokenizer; returns the largest logit difference on a probe.

    Checks before returning: the reloaded merged model's logits equal base + adapter on a
    probe, and the saved chat template renders the same prompt as the one used in
    training. A failed check raises instead of leaving a silent mismatch.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    probe = _probe_ids(tokenizer)
    with torch.no_grad():
        expected = model(probe).logits
    merged = model.merge_and_unload()
    merged.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    reloaded = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
    with torch.no_grad():
        difference = (reloaded(probe).logits - expected).abs().max().item()
    allowed = MERGE_TOLERANCE * max(1.0, expected.abs().max().item())
    if difference > allowed:
        raise TunelabError(
            f"merge check failed: logits differ by {difference:.2e} (> {allowed:.1e}, "
            f"{MERGE_TOLERANCE} of the largest logit)"
        )
    check_template_round_trip(tokenizer, AutoTokenizer.from_pretrained(output))
    return difference


TEMPLATE_PROBE = [
    {"role": "system", "content": "你是一个助手。"},
    {"role": "user", "content": "第一个问题"},
    {"role": "assistant", "content": "第一个回答"},
    {"role": "user", "content": "Second question?"},
]


def check_template_round_trip(trained: Any, saved: Any) -> None:
    """The saved tokenizer must render prompts exactly as the training tokenizer did."""
    from tunelab.data.encode import render_chat

    for thinking in (False, True):
        before = render_chat(trained, TEMPLATE_PROBE, add_generation_prompt=True, thinking=thinking)
        after = render_chat(saved, TEMPLATE_PROBE, add_generation_prompt=True, thinking=thinking)
        if before != after:
            raise TunelabError(
                "chat template round trip failed: the saved tokenizer renders prompts differently "
                f"from training\n  training: {before!r}\n  saved:    {after!r}"
            )


def _probe_ids(tokenizer: Any) -> torch.Tensor:
    from tunelab.data.encode import encode_prompt

    return torch.tensor([encode_prompt(tokenizer, TEMPLATE_PROBE)])
