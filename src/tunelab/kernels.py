"""Leaner training kernels: a fused LoRA linear and a SwiGLU that keeps less for backward.

PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as separate operations,
each writing a full-width activation and most of them keeping one for backward. On a CPU,
where a 135M model's matrix products are small, those extra passes over memory cost about
as much as the products themselves. ``LoraLinearFunction`` computes the same value with
the update added in place, keeps only what backward needs (the layer's input, once, in the
base weight's dtype; a one-byte dropout mask; the rank-r projection) and writes the three
gradients directly. The adapter's parameters are PEFT's own, so saving, loading and
merging are untouched; ``install`` only swaps the forward of each plain LoRA layer.

``SwiGLUFunction`` does the same for ``silu(gate) * up`` in Llama/Qwen-style MLPs: it keeps
gate and up and recomputes the activation in backward, one full-width tensor fewer per
layer than autograd keeps.
"""

from __future__ import annotations

import types
import weakref
from typing import Any

import torch
from torch import nn

from tunelab.models import FastDropout


class LoraLinearFunction(torch.autograd.Function):
    """``x W^T (+ bias) + scaling * (dropout(x) A^T) B^T`` with W frozen.

    ``keep`` marks the input elements dropout keeps (None: no dropout): boolean, or
    {0, 1} in bf16 when the base weights are bf16, so that masking is a bf16 product.
    Dropout's 1 / keep_prob is applied to the rank-r projection, not to a full-width tensor.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        x_low: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        keep: torch.Tensor | None,
        keep_prob: float,
    ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        adapter_input = rows if keep is None else _masked(rows.clone(), keep, in_place=True)
        projected = adapter_input @ lora_a.t()
        if keep is not None:
            projected.mul_(1.0 / keep_prob)
        out = (x_low.reshape(rows.shape) @ weight.t()).to(x.dtype)
        if bias is not None:
            out += bias
        out.addmm_(projected, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(x_low, weight, lora_a, lora_b, projected, keep)
        ctx.scaling, ctx.keep_prob, ctx.out_dtype = scaling, keep_prob, x.dtype
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_low, weight, lora_a, lora_b, projected, keep = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(ctx.out_dtype)
        grad_projected = grad @ lora_b  # (rows, r)
        # the adapter's chain rule, with dropout's 1 / keep_prob folded into a rank-r factor
        adapter_scale = ctx.scaling / ctx.keep_prob
        grad_b = grad_a = grad_x = None
        if ctx.needs_input_grad[5]:
            # (r, rows) @ (rows, out) reads grad in its own layout; grad.t() @ projected does not
            grad_b = (projected.t() @ grad).t().mul_(ctx.scaling)
        if ctx.needs_input_grad[4]:
            rows = x_low.reshape(grad.shape[0], -1)
            adapter_input = rows if keep is None else _masked(rows, keep)
            grad_a = grad_projected.t().to(rows.dtype) @ adapter_input
            grad_a = grad_a.to(lora_a.dtype).mul_(adapter_scale)
        if ctx.needs_input_grad[0]:
            grad_x = (grad.to(weight.dtype) @ weight).to(ctx.out_dtype)
            scaled_a = lora_a * adapter_scale
            if keep is None:
                grad_x.addmm_(grad_projected, scaled_a)
            else:
                grad_x += _masked(grad_projected @ scaled_a, keep, in_place=True)
            grad_x = grad_x.reshape(*grad_out.shape[:-1], -1)
        return grad_x, None, None, None, grad_a, grad_b, None, None, None


def _masked(values: torch.Tensor, keep: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``values`` where ``keep``, else 0: a product for a numeric mask, a select for a boolean.

    In place, a product by a bf16 mask is fast even for fp32 values.
    """
    keep = keep.reshape(values.shape)
    if keep.dtype == torch.bool:
        return values.masked_fill_(~keep, 0.0) if in_place else torch.where(keep, values, 0.0)
    return values.mul_(keep) if in_place else values * keep


class SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) * up``, keeping only ``gate`` and ``up`` for backward."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return nn.functional.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        grad_up = nn.functional.silu(gate).mul_(grad)
        return grad_gate, grad_up


def _swiglu_mlp_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return mlp._hf_forward(x)
    return mlp.down_proj(SwiGLUFunction.apply(mlp.gate_proj(x), mlp.up_proj(x)))


def _is_swiglu_mlp(module: nn.Module) -> bool:
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    if not all(hasattr(module, part) for part in parts):
        return False
    # transformers' own SiLU module is not an nn.SiLU
    return isinstance(module.act_fn, nn.SiLU) or type(module.act_fn).__name__ == "SiLUActivation"


class _LowPrecisionInputs:
    """The last input cast to the base weights' dtype, shared by layers reading one tensor.

    q/k/v (and gate/up) read the same normed hidden states: one cast, one saved copy.
    """

    def __init__(self) -> None:
        self.source: weakref.ref | None = None
        self.version = -1
        self.cast: torch.Tensor | None = None

    def get(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if x.dtype == dtype:
            return x.detach()
        fresh = self.source is not None and self.source() is x and self.version == x._version
        if fresh and self.cast is not None and self.cast.dtype == dtype:
            return self.cast
        self.source, self.version = weakref.ref(x), x._version
        self.cast = x.detach().to(dtype)
        return self.cast


def _fast_forward(layer: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """PEFT's forward for the cases this file does not cover; the fused path otherwise."""
    adapters = [name for name in layer.active_adapters if name in layer.lora_A]
    base = layer.get_base_layer()
    dropout = layer.lora_dropout[adapters[0]] if len(adapters) == 1 else None
    plain = (
        not args
        and not kwargs
        and not layer.disable_adapters
        and not layer.merged
        and isinstance(dropout, FastDropout | nn.Identity)
        and adapters[0] not in getattr(layer, "lora_variant", {})
        and torch.is_grad_enabled()
        and not base.weight.requires_grad
    )
    if not plain:
        return layer._peft_forward(x, *args, **kwargs)
    name = adapters[0]
    probability = dropout.p if isinstance(dropout, FastDropout) and layer.training else 0.0
    x_low = layer._tunelab_inputs.get(x, base.weight.dtype)
    keep = None
    if probability > 0:
        mask_dtype = torch.bfloat16 if x_low.dtype == torch.bfloat16 else torch.bool
        keep = dropout.keep_mask(x, mask_dtype)
    return LoraLinearFunction.apply(
        x,
        x_low,
        base.weight,
        base.bias,
        layer.lora_A[name].weight,
        layer.lora_B[name].weight,
        float(layer.scaling[name]),
        keep,
        1.0 - probability,
    )


def install(model: nn.Module) -> int:
    """Give every PEFT LoRA ``Linear`` the fused forward, every SwiGLU MLP the lean one.

    LoRA layers outside the plain case (several or merged adapters, DoRA and other
    variants, a dropout tunelab did not put there) and every layer without gradients keep
    their own forward. Returns how many modules were changed.
    """
    from peft.tuners.lora import Linear as LoraLinear

    shared = _LowPrecisionInputs()
    changed = 0
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module._tunelab_inputs = shared
            module.forward = types.MethodType(_fast_forward, module)
            changed += 1
        elif _is_swiglu_mlp(module) and not hasattr(module, "_hf_forward"):
            module._hf_forward = module.forward
            module.forward = types.MethodType(_swiglu_mlp_forward, module)
            changed += 1
    return changed
