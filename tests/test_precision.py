"""Precision: bf16 on CPU keeps the adapter, norms and loss in fp32."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.config import LoraConfig, ModelConfig
from tunelab.cpu.dropout import FastDropout
from tunelab.errors import TunelabError
from tunelab.models.load import attach_lora, load_causal_lm
from tunelab.precision import (
    bf16_frozen_matmuls,
    cpu_has_native_bf16,
    fp32_matmuls,
    resolve_precision,
)


def test_auto_follows_the_hardware_and_fp16_needs_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU rules")
    assert resolve_precision("auto") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32"
    # a script written for a GPU says fp16: on a CPU it trains in what the CPU does best
    assert resolve_precision("fp16") == resolve_precision("auto")


def test_bf16_on_a_cpu_without_native_bf16_is_refused(monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU rules")
    monkeypatch.setattr("tunelab.precision.cpu_has_native_bf16", lambda: False)
    with pytest.raises(TunelabError, match="AVX-512 BF16 or AMX"):
        resolve_precision("bf16")
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setattr("tunelab.precision.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("bf16") == "bf16"


def test_bf16_frozen_matmuls_keep_the_adapter_and_outputs_in_fp32(qwen3_dir) -> None:
    spec = ModelConfig(name=str(qwen3_dir))
    torch.manual_seed(0)
    reference = attach_lora(load_causal_lm(qwen3_dir, spec, torch.float32), LoraConfig(r=2))
    torch.manual_seed(0)
    model = attach_lora(load_causal_lm(qwen3_dir, spec, torch.float32), LoraConfig(r=2))
    converted = bf16_frozen_matmuls(model)
    assert converted == 2 * 7  # seven projections in each of two layers
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32, name
    head = model.get_output_embeddings()
    assert head.weight.dtype == torch.float32
    ids = torch.tensor([[5, 900, 151_000, 42, 7]])
    logits = model(input_ids=ids).logits
    assert logits.dtype == torch.float32
    # every frozen projection rounds its input and weight to bf16 (unit roundoff u = 2^-8
    # each, so about 2u per product), compounded over two layers and the head: 0.05 ~ 13u
    torch.testing.assert_close(logits, reference(input_ids=ids).logits, rtol=0.05, atol=0.05)
    logits.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


def test_an_adapter_folds_into_fp32_weights_as_bf16_rounded_them(qwen3_dir) -> None:
    import copy

    from torch import nn

    spec = ModelConfig(name=str(qwen3_dir))
    torch.manual_seed(0)
    model = attach_lora(load_causal_lm(qwen3_dir, spec, torch.float32), LoraConfig(r=2))
    with torch.no_grad():  # a trained adapter (B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    expected = copy.deepcopy(model)
    frozen = [
        module
        for module in expected.modules()
        if isinstance(module, nn.Linear) and not module.weight.requires_grad
    ]
    with torch.no_grad():  # the base weights as bf16 storage rounds them, held in fp32
        for module in frozen:
            if module is not expected.get_output_embeddings():
                module.weight.copy_(module.weight.to(torch.bfloat16).float())
    converted = bf16_frozen_matmuls(model)
    assert fp32_matmuls(model) == converted == 2 * 7 and fp32_matmuls(model) == 0
    assert all(param.dtype == torch.float32 for param in model.parameters())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in linears)
    ids = torch.tensor([[5, 900, 151_000, 42, 7]])
    folded = model.merge_and_unload()(input_ids=ids).logits
    # the same fp32 weights folded the same way: equal up to fp32 rounding
    torch.testing.assert_close(folded, expected.merge_and_unload()(input_ids=ids).logits)


def test_fast_dropout_matches_dropout_statistics() -> None:
    torch.manual_seed(0)
    layer = FastDropout(0.25)
    x = torch.ones(400, 500)
    out = layer(x)
    assert abs((out == 0).float().mean().item() - 0.25) < 0.01
    assert abs(out.mean().item() - 1.0) < 0.02
    assert torch.equal(layer.eval()(x), x)


def test_lora_dropout_layers_use_fast_dropout(qwen3_dir) -> None:
    from tunelab.cpu.training import prepare_for_cpu_training

    model = AutoModelForCausalLM.from_pretrained(qwen3_dir)
    wrapped = attach_lora(model, LoraConfig(r=2, dropout=0.1))
    prepare_for_cpu_training(wrapped, "fp32", 64)
    kinds = {type(m).__name__ for m in wrapped.modules() if "Dropout" in type(m).__name__}
    assert kinds == {"FastDropout"}
