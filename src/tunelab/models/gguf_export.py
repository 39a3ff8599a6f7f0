"""A merged model as one GGUF file for llama.cpp and Ollama: weights, tokenizer and chat
template, written with the ``gguf`` package's writer and tensor-name maps.

Llama's attention projections are stored for interleaved rotary pairs in GGUF, where
transformers keeps the halves apart: their rows are permuted (llama.cpp's converter does the
same). Qwen2 / Qwen3 use the halves-apart ("neox") rotation in llama.cpp too, so their
weights go as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.errors import TunelabError

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen2ForCausalLM": "qwen2",
}
DTYPES = ("f16", "bf16", "q8_0")
Q8_BLOCK = 32  # values per q8_0 block: a row must be a whole number of blocks

# the pre-tokenizer's split pattern, as llama.cpp names it (tokenizer.ggml.pre)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class GgufSummary:
    """What was written."""

    path: str
    architecture: str
    dtype: str
    tensors: int
    vocab_size: int
    pre_tokenizer: str
    bytes: int


def gguf_architecture(model_config: Any) -> str:
    """The GGUF architecture of a transformers model config, or a clear refusal."""
    names = getattr(model_config, "architectures", None) or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise TunelabError(
        f"GGUF export supports Llama, Qwen2 and Qwen3 models, not {', '.join(names) or 'this one'}"
        ": use `tunelab merge` and llama.cpp's convert_hf_to_gguf.py on the merged directory"
    )


def write_gguf(
    model: Any, tokenizer: Any, output: Path, dtype: str, chat_template: str, name: str
) -> GgufSummary:
    """Write ``model`` (a plain transformers model, adapter already merged) with
    ``tokenizer`` and ``chat_template`` to ``output`` atomically; ``dtype`` is one of DTYPES
    (checked by the caller before the model is loaded)."""
    import gguf

    config = model.config
    arch = gguf_architecture(config)
    _refuse_rope_scaling(config)
    staging = output.with_name(f".partial-{output.name}")
    writer = gguf.GGUFWriter(str(staging), arch)
    writer.add_name(name)
    _add_hyperparameters(writer, config, dtype)
    pre = _add_tokenizer(writer, tokenizer, config.vocab_size, chat_template)
    count = _add_tensors(writer, model, arch, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    staging.replace(output)
    return GgufSummary(
        str(output), arch, dtype, count, config.vocab_size, pre, output.stat().st_size
    )


def _refuse_rope_scaling(config: Any) -> None:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = (
        rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    )
    if kind not in ("default", None):
        raise TunelabError(
            f"GGUF export: rope scaling {kind!r} is not supported; use `tunelab merge` and "
            "llama.cpp's converter"
        )


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def _add_hyperparameters(writer: Any, config: Any, dtype: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    file_types = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tensors(writer: Any, model: Any, arch: str, dtype: str) -> int:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(
        getattr(gguf.MODEL_ARCH, arch.upper()), config.num_hidden_layers
    )
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise TunelabError(f"GGUF export: no GGUF name for tensor {key!r} of {arch}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and key.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in key else config.num_key_value_heads
            data = interleave_rotary_halves(data, heads)
        stored, kind = _encoded(data, dtype)
        writer.add_tensor(target, stored, raw_dtype=kind)
        count += 1
    return count


def interleave_rotary_halves(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection reordered from transformers' rotary halves (x0..x63, x64..)
    to the interleaved pairs GGUF's Llama expects (x0, x64, x1, x65, ...), per head."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _encoded(data: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """A tensor in the file's type: vectors (norms, biases) stay f32 as llama.cpp keeps them;
    a q8_0 matrix whose rows are not whole blocks falls back to f16."""
    import gguf

    kinds = gguf.GGMLQuantizationType
    if data.ndim < 2:
        return data, kinds.F32
    if dtype == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(data, kinds.Q8_0), kinds.Q8_0
    if dtype == "bf16":
        return gguf.quants.quantize(data, kinds.BF16), kinds.BF16
    return data.astype(np.float16), kinds.F16


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, chat_template: str) -> str:
    """Tokens, their types, merges, special ids, the pre-tokenizer's name and the template."""
    import tempfile

    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec.get("model", {}).get("type") != "BPE":
        raise TunelabError(
            "GGUF export supports byte-level BPE tokenizers (Llama 3, SmolLM, Qwen); this one is "
            f"{spec.get('model', {}).get('type')}: use `tunelab merge` and llama.cpp's converter"
        )
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    tokens, types = token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)
    return pre


def pre_tokenizer_name(pre_tokenizer: dict[str, Any] | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer (it splits text before BPE)."""
    parts = _flatten(pre_tokenizer)
    kinds = [part.get("type") for part in parts]
    splits = [part.get("pattern", {}).get("Regex") for part in parts if part.get("type") == "Split"]
    if splits == [QWEN2_SPLIT]:
        return "qwen2"
    if splits == [LLAMA3_SPLIT]:
        return "llama-bpe"
    digits = any(p.get("type") == "Digits" and p.get("individual_digits") for p in parts)
    if not splits and digits and kinds[-1:] == ["ByteLevel"]:
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    raise TunelabError(
        f"GGUF export: this tokenizer's pre-tokenizer ({', '.join(map(str, kinds))}) is not one "
        "tunelab can name for llama.cpp; use `tunelab merge` and llama.cpp's converter"
    )


def _flatten(pre_tokenizer: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre_tokenizer:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return [p for inner in pre_tokenizer["pretokenizers"] for p in _flatten(inner)]
    return [pre_tokenizer]


def token_table(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token text and GGUF token type, padded to the embedding's rows."""
    import gguf

    kinds = gguf.TokenType
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(max(vocab_size, len(by_id))):
        if index in added:
            tokens.append(added[index].content)
            types.append(kinds.CONTROL if added[index].special else kinds.USER_DEFINED)
        elif index in by_id:
            tokens.append(by_id[index])
            types.append(kinds.NORMAL)
        else:  # embedding rows beyond the tokenizer (Qwen pads its vocabulary)
            tokens.append(f"[PAD{index}]")
            types.append(kinds.UNUSED)
    return tokens, types
