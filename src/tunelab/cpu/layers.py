"""Lean forwards for CPU training: SwiGLU MLPs and RMSNorms that keep less for backward,
and ``install``, which gives a model these and the fused LoRA layers.

``SwiGLUFunction`` computes ``silu(gate) * up`` in Llama/Qwen-style MLPs: it keeps gate and up
and recomputes the activation in backward, one full-width tensor fewer per layer than
autograd keeps; ``SwiGLUDownFunction`` also runs a fused LoRA ``down_proj`` on that product
and recomputes it in backward instead of keeping it (the widest tensor of a layer).
``RMSNormFunction`` keeps a norm's output, which the fused projections after it keep
anyway, instead of its input.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from tunelab.cpu.lora import (
    LowPrecisionInputs,
    fast_forward,
    fused_parts,
    lora_backward,
    lora_forward,
)


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


class SwiGLUDownFunction(torch.autograd.Function):
    """``down(silu(gate) * up)`` for a fused LoRA ``down``: keeps gate and up, not their product.

    The product is the widest tensor of the layer; backward recomputes it from gate and up
    (one product, reusing the SiLU that gate's gradient needs anyway).
    """

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, *parts: Any) -> torch.Tensor:
        """``parts``: down's weight, bias, A, B, scaling, keep mask, keep_prob."""
        rows = nn.functional.silu(gate).mul_(up).reshape(-1, gate.shape[-1])
        out = lora_forward(ctx, rows, rows.to(parts[0].dtype), parts, kept=(gate, up))
        return out.reshape(*gate.shape[:-1], -1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate, up, *saved = ctx.saved_tensors  # read once: checkpointing allows no second unpack
        activated = nn.functional.silu(gate)
        rows = (activated * up).reshape(-1, gate.shape[-1]).to(saved[0].dtype)
        grad_rows, grad_a, grad_b = lora_backward(ctx, grad_out, rows, saved, True)
        grad_hidden = grad_rows.reshape(gate.shape)
        grad_gate = torch.ops.aten.silu_backward(grad_hidden * up, gate)
        grad_up = activated.mul_(grad_hidden)
        return grad_gate, grad_up, None, None, grad_a, grad_b, None, None, None


class RMSNormFunction(torch.autograd.Function):
    """Llama-style RMSNorm with a frozen, zero-free weight, keeping its output, not its input.

    The output is what the next projections read, and their fused LoRA layers keep it for
    backward anyway; the input (the residual stream) is otherwise free once added to. The
    normalised input is the output divided by the weight, hence zero-free.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        mean_square = torch.linalg.vecdot(x, x).unsqueeze(-1).div_(x.shape[-1])
        inverse_rms = mean_square.add_(eps).rsqrt_()
        out = (x * inverse_rms).mul_(weight)
        ctx.save_for_backward(out, weight, inverse_rms)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        out, weight, inverse_rms = ctx.saved_tensors
        # with n = x / rms: dx = (dn - n * mean(dn * n)) / rms, and dn * n = grad * out
        mean_product = torch.linalg.vecdot(grad, out).unsqueeze(-1).div_(out.shape[-1])
        normalised = (out / weight).mul_(mean_product)
        return (grad * weight).sub_(normalised).mul_(inverse_rms), None, None


def _rms_norm_forward(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    lean = (
        torch.is_grad_enabled()
        and x.dtype == torch.float32
        and x.dtype == norm.weight.dtype
        and not norm.weight.requires_grad
        and bool((norm.weight != 0).all())
    )
    if not lean:
        return norm._hf_forward(x)
    return RMSNormFunction.apply(x, norm.weight, norm.variance_epsilon)


# RMSNorms computing weight * x / sqrt(mean(x^2) + eps), as Llama's; Gemma's uses 1 + weight
LLAMA_STYLE_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")


def _swiglu_mlp_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return mlp._hf_forward(x)
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    down = mlp.down_proj
    parts = fused_parts(down, gate) if hasattr(down, "_tunelab_inputs") else None
    if parts is None:
        return down(SwiGLUFunction.apply(gate, up))
    return SwiGLUDownFunction.apply(gate, up, *parts)


def _is_swiglu_mlp(module: nn.Module) -> bool:
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    if not all(hasattr(module, part) for part in parts):
        return False
    # transformers' own SiLU module is not an nn.SiLU
    return isinstance(module.act_fn, nn.SiLU) or type(module.act_fn).__name__ == "SiLUActivation"


def install(model: nn.Module) -> int:
    """Give every PEFT LoRA ``Linear`` the fused forward, every SwiGLU MLP and Llama-style
    RMSNorm the lean one.

    LoRA layers outside the plain case (several or merged adapters, DoRA and other
    variants, a dropout tunelab did not put there), norms with a trainable, zero-holding or
    non-fp32 weight, and every module without gradients keep their own forward. Returns how
    many modules were changed.
    """
    from peft.tuners.lora import Linear as LoraLinear

    shared = LowPrecisionInputs()
    changed = 0
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module._tunelab_inputs = shared
            module.forward = types.MethodType(fast_forward, module)
            changed += 1
        elif _is_swiglu_mlp(module) and not hasattr(module, "_hf_forward"):
            module._hf_forward = module.forward
            module.forward = types.MethodType(_swiglu_mlp_forward, module)
            changed += 1
        elif type(module).__name__ in LLAMA_STYLE_NORMS and not hasattr(module, "_hf_forward"):
            module._hf_forward = module.forward
            module.forward = types.MethodType(_rms_norm_forward, module)
            changed += 1
    return changed
