"""The fused LoRA linear and the lean SwiGLU compute what PEFT and autograd compute."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from tunelab.config import LoraConfig
from tunelab.cpu import attention, layers
from tunelab.cpu.dropout import use_fast_dropout
from tunelab.models.load import attach_lora
from tunelab.precision import bf16_frozen_matmuls


def _tiny_lora_model(model_dir: Path, fused: bool, bf16: bool = False) -> Any:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model = attach_lora(model, LoraConfig(r=4, dropout=0.1))
    use_fast_dropout(model, recomputable=False)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero, so the adapter's path carries a gradient to lora_A
            torch.nn.init.normal_(param, std=0.1)
    if bf16:
        bf16_frozen_matmuls(model)
    if fused:
        # per layer: seven LoRA layers, one MLP, four norms (Qwen3 norms q and k); a final norm
        assert layers.install(model) == 2 * (7 + 1 + 4) + 1
    return model.train()


def _loss_and_grads(model: Any, **inputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    np.random.seed(3)  # LoRA dropout masks come from numpy's generator, in layer order
    logits = model(**inputs).logits
    logits.pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return logits, grads


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-frozen-weights"])
def test_fused_lora_matches_peft_outputs_and_gradients(qwen3_dir: Path, bf16: bool) -> None:
    ids = torch.randint(0, 151_000, (2, 11), generator=torch.Generator().manual_seed(1))
    reference_logits, reference = _loss_and_grads(
        _tiny_lora_model(qwen3_dir, False, bf16), input_ids=ids
    )
    logits, grads = _loss_and_grads(_tiny_lora_model(qwen3_dir, True, bf16), input_ids=ids)
    # fp32: the same products summed in another order (K <= 64 terms: K u ~ 4e-6). bf16: the
    # fused layer also takes lora_A's gradient from bf16 factors, PEFT from fp32 ones: one
    # rounding of each (u = 2^-8), a few u in all
    tolerance = {"rtol": 2e-2, "atol": 1e-3} if bf16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(logits, reference_logits, **tolerance)
    assert grads.keys() == reference.keys() and len(grads) == 2 * 7 * 2
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(grad, reference[name], **tolerance, msg=name)


def _saved_activation_bytes(model: Any, **inputs: Any) -> int:
    """Bytes autograd keeps for backward over one forward pass, weights not counted."""
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # activations only, not (views of) weights
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(**inputs).logits.sum()
    return sum(storages.values())


def test_fused_path_keeps_less_for_backward(qwen3_dir: Path) -> None:
    ids = torch.randint(0, 151_000, (4, 32), generator=torch.Generator().manual_seed(2))
    saved = {
        fused: _saved_activation_bytes(_tiny_lora_model(qwen3_dir, fused, bf16=True), input_ids=ids)
        for fused in (False, True)
    }
    assert saved[True] < 0.8 * saved[False]


def test_grouped_attention_on_packed_rows_matches_repeated_heads_and_keeps_less(
    qwen3_dir: Path,
) -> None:
    ids = torch.randint(0, 151_000, (2, 24), generator=torch.Generator().manual_seed(5))
    # two samples per row, positions restarting at each: transformers builds a block mask
    positions = torch.cat([torch.arange(10), torch.arange(14)]).expand(2, -1)
    inputs = {"input_ids": ids, "position_ids": positions, "use_cache": False}
    repeated = _tiny_lora_model(qwen3_dir, fused=True)
    grouped = _tiny_lora_model(qwen3_dir, fused=True)
    assert attention.use_cpu_attention(grouped)
    assert grouped.config._attn_implementation == attention.CPU_ATTENTION
    reference_logits, reference = _loss_and_grads(repeated, **inputs)
    logits, grads = _loss_and_grads(grouped, **inputs)
    torch.testing.assert_close(logits, reference_logits, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-5, atol=1e-6, msg=name)
    assert _saved_activation_bytes(grouped, **inputs) < _saved_activation_bytes(repeated, **inputs)


def _tiny_lora_from_config(config: Qwen3Config) -> Any:
    torch.manual_seed(0)
    model = attach_lora(Qwen3ForCausalLM(config), LoraConfig(r=4, dropout=0.1))
    use_fast_dropout(model, recomputable=False)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    layers.install(model)
    return model.train()


@pytest.mark.parametrize("grouped_heads", [True, False], ids=["grouped", "one-kv-per-query"])
def test_attention_per_sample_matches_the_block_mask(
    qwen3_dir: Path, grouped_heads: bool, sdpa_masks: Callable[[], list[Any]]
) -> None:
    lengths = [7, 12, 5]
    ids = torch.randint(0, 151_000, (1, sum(lengths)), generator=torch.Generator().manual_seed(6))
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    starts = torch.tensor([0, 7, 19, 24], dtype=torch.int32)
    boundaries = {"cu_seq_lens_q": starts, "cu_seq_lens_k": starts}
    inputs = {"input_ids": ids, "position_ids": positions, "use_cache": False}
    config = Qwen3Config.from_pretrained(qwen3_dir)
    if not grouped_heads:
        config.num_key_value_heads = config.num_attention_heads
    masked, per_sample = _tiny_lora_from_config(config), _tiny_lora_from_config(config)
    assert attention.use_cpu_attention(per_sample) and attention.takes_sample_boundaries(per_sample)
    reference_logits, reference = _loss_and_grads(masked, **inputs)
    calls = sdpa_masks()
    logits, grads = _loss_and_grads(per_sample, **inputs, **boundaries)
    # one causal call per sample and layer, no mask
    assert calls == [None] * (config.num_hidden_layers * len(lengths))
    torch.testing.assert_close(logits, reference_logits, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_cpu_attention_leaves_a_model_on_another_attention_alone(qwen3_dir: Path) -> None:
    model = Qwen3ForCausalLM._from_config(
        Qwen3Config.from_pretrained(qwen3_dir), attn_implementation="eager"
    )
    assert not attention.use_cpu_attention(model)
    assert model.config._attn_implementation == "eager"
    assert not attention.takes_sample_boundaries(model)


def test_without_gradients_and_with_the_adapter_off_the_layers_behave_as_peft(
    qwen3_dir: Path,
) -> None:
    ids = torch.randint(0, 151_000, (1, 9), generator=torch.Generator().manual_seed(4))
    plain = _tiny_lora_model(qwen3_dir, False).eval()
    fused = _tiny_lora_model(qwen3_dir, True).eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
        with fused.disable_adapter(), plain.disable_adapter():
            off = fused(input_ids=ids).logits
            torch.testing.assert_close(off, plain(input_ids=ids).logits)
        assert not torch.allclose(off, fused(input_ids=ids).logits)


def test_swiglu_gradients_match_autograd() -> None:
    gate = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layers.SwiGLUFunction.apply, (gate, up))
    torch.testing.assert_close(
        layers.SwiGLUFunction.apply(gate, up), torch.nn.functional.silu(gate) * up
    )


def test_rms_norm_gradients_match_autograd() -> None:
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(7, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(layers.RMSNormFunction.apply, (x, weight, 1e-6))
    rms = x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(layers.RMSNormFunction.apply(x, weight, 1e-6), weight * x / rms)


def test_rms_norm_with_a_zero_in_its_weight_keeps_the_models_own_forward(qwen3_dir: Path) -> None:
    model = _tiny_lora_model(qwen3_dir, fused=True)
    norm = model.base_model.model.model.norm
    with torch.no_grad():
        norm.weight[3] = 0.0
    x = torch.randn(2, 4, norm.weight.shape[0], requires_grad=True)
    out = norm(x)
    assert out.grad_fn is not None and "RMSNormFunction" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, norm._hf_forward(x))
