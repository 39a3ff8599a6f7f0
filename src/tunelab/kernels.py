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
layer than autograd keeps; ``SwiGLUDownFunction`` also runs a fused LoRA ``down_proj`` on
that product and recomputes it in backward instead of keeping it (the widest tensor of a
layer). ``RMSNormFunction`` keeps a norm's output, which the fused projections after it
keep anyway, instead of its input.

``use_cpu_attention`` computes each sample of a packed row on its own when the batch says
where samples start, and otherwise keeps grouped-query attention grouped on a CPU:
transformers' SDPA path repeats each key/value head for every query head it serves whenever
a mask is given, and SDPA then keeps the repeated copies for backward.
"""

from __future__ import annotations

import itertools
import types
import weakref
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tunelab.models import FastDropout


class LoraLinearFunction(torch.autograd.Function):
    """``x W^T (+ bias) + scaling * (dropout(x) A^T) B^T`` with W frozen.

    ``keep`` marks the input elements dropout keeps (None: no dropout): boolean, or
    {0, 1} in bf16 when the base weights are bf16, so that masking is a bf16 product.
    Dropout's 1 / keep_prob is applied to the rank-r projection, not to a full-width tensor.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x_low: torch.Tensor, *parts: Any) -> torch.Tensor:
        """``parts``: weight, bias, A, B, scaling, keep mask, keep_prob (``_fused_parts``)."""
        rows = x.reshape(-1, x.shape[-1])
        out = _lora_forward(ctx, rows, x_low.reshape(rows.shape), parts, kept=(x_low,))
        return out.reshape(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_low, *saved = ctx.saved_tensors  # read once: checkpointing allows no second unpack
        rows_low = x_low.reshape(-1, x_low.shape[-1])
        grad_x, grad_a, grad_b = _lora_backward(
            ctx, grad_out, rows_low, saved, ctx.needs_input_grad[0]
        )
        if grad_x is not None:
            grad_x = grad_x.reshape(*grad_out.shape[:-1], -1)
        return grad_x, None, None, None, grad_a, grad_b, None, None, None


def _lora_forward(
    ctx: Any,
    rows: torch.Tensor,
    rows_low: torch.Tensor,
    parts: tuple[Any, ...],
    kept: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """A fused LoRA layer's output rows; saves ``kept``, then what the adapter's backward needs.

    ``rows_low``: ``rows`` in the base weight's dtype.
    """
    weight, bias, lora_a, lora_b, scaling, keep, keep_prob = parts
    adapter_input = rows if keep is None else _masked(rows, keep)
    projected = adapter_input @ lora_a.t()
    if keep is not None:
        projected.mul_(1.0 / keep_prob)
    out = (rows_low @ weight.t()).to(rows.dtype)
    if bias is not None:
        out += bias
    out.addmm_(projected, lora_b.t(), alpha=scaling)
    ctx.save_for_backward(*kept, weight, lora_a, lora_b, projected, keep)
    ctx.scaling, ctx.keep_prob, ctx.out_dtype = scaling, keep_prob, rows.dtype
    return out


def _lora_backward(
    ctx: Any,
    grad_out: torch.Tensor,
    rows_low: torch.Tensor,
    saved: list[torch.Tensor | None],
    needs_x: bool,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of the input rows (if ``needs_x``), of A and of B.

    ``saved``: what ``_lora_forward`` saved after ``kept``. The autograd function's inputs
    must put A and B at positions 4 and 5.
    """
    weight, lora_a, lora_b, projected, keep = saved
    grad = grad_out.reshape(-1, grad_out.shape[-1]).to(ctx.out_dtype)
    grad_projected = grad @ lora_b  # (rows, r)
    # the adapter's chain rule, with dropout's 1 / keep_prob folded into a rank-r factor
    adapter_scale = ctx.scaling / ctx.keep_prob
    grad_x = grad_a = grad_b = None
    if ctx.needs_input_grad[5]:
        # (r, rows) @ (rows, out) reads grad in its own layout; grad.t() @ projected does not
        grad_b = (projected.t() @ grad).t().mul_(ctx.scaling)
    if ctx.needs_input_grad[4]:
        adapter_input = rows_low if keep is None else _masked(rows_low, keep)
        grad_a = grad_projected.t().to(rows_low.dtype) @ adapter_input
        grad_a = grad_a.to(lora_a.dtype).mul_(adapter_scale)
    if needs_x:
        grad_x = (grad.to(weight.dtype) @ weight).to(ctx.out_dtype)
        scaled_a = lora_a * adapter_scale
        if keep is None:
            grad_x.addmm_(grad_projected, scaled_a)
        else:
            grad_x += _masked(grad_projected @ scaled_a, keep, in_place=True)
    return grad_x, grad_a, grad_b


def _masked(values: torch.Tensor, keep: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``values`` where ``keep``, else 0, as a product by the mask.

    A boolean mask multiplies as its uint8 view: measured on 600 x 1536 fp32 values, 0.16 ms
    against 1.0 ms for ``torch.where`` and 1.6 ms for ``masked_fill_(~keep)``.
    """
    keep = keep.reshape(values.shape)
    if keep.dtype == torch.bool:
        keep = keep.view(torch.uint8)
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


class SwiGLUDownFunction(torch.autograd.Function):
    """``down(silu(gate) * up)`` for a fused LoRA ``down``: keeps gate and up, not their product.

    The product is the widest tensor of the layer; backward recomputes it from gate and up
    (one product, reusing the SiLU that gate's gradient needs anyway).
    """

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, *parts: Any) -> torch.Tensor:
        """``parts``: down's weight, bias, A, B, scaling, keep mask, keep_prob."""
        rows = nn.functional.silu(gate).mul_(up).reshape(-1, gate.shape[-1])
        out = _lora_forward(ctx, rows, rows.to(parts[0].dtype), parts, kept=(gate, up))
        return out.reshape(*gate.shape[:-1], -1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gate, up, *saved = ctx.saved_tensors  # read once: checkpointing allows no second unpack
        activated = nn.functional.silu(gate)
        rows = (activated * up).reshape(-1, gate.shape[-1]).to(saved[0].dtype)
        grad_rows, grad_a, grad_b = _lora_backward(ctx, grad_out, rows, saved, True)
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
    parts = _fused_parts(down, gate) if hasattr(down, "_tunelab_inputs") else None
    if parts is None:
        return down(SwiGLUFunction.apply(gate, up))
    return SwiGLUDownFunction.apply(gate, up, *parts)


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
    parts = None if args or kwargs else _fused_parts(layer, x)
    if parts is None:
        return layer._peft_forward(x, *args, **kwargs)
    x_low = layer._tunelab_inputs.get(x, parts[0].dtype)
    return LoraLinearFunction.apply(x, x_low, *parts)


def _fused_parts(layer: nn.Module, x: torch.Tensor) -> tuple[Any, ...] | None:
    """(weight, bias, A, B, scaling, keep mask, keep_prob) of a plain LoRA layer, else None.

    Plain: one active adapter, not merged nor disabled, no variant (DoRA and others), a
    dropout tunelab put there, a frozen base, gradients on. The keep mask is drawn here.
    """
    adapters = [name for name in layer.active_adapters if name in layer.lora_A]
    base = layer.get_base_layer()
    dropout = layer.lora_dropout[adapters[0]] if len(adapters) == 1 else None
    plain = (
        not layer.disable_adapters
        and not layer.merged
        and isinstance(dropout, FastDropout | nn.Identity)
        and adapters[0] not in getattr(layer, "lora_variant", {})
        and torch.is_grad_enabled()
        and not base.weight.requires_grad
    )
    if not plain:
        return None
    name = adapters[0]
    probability = dropout.p if isinstance(dropout, FastDropout) and layer.training else 0.0
    keep = None
    if probability > 0:
        mask_dtype = torch.bfloat16 if base.weight.dtype == torch.bfloat16 else torch.bool
        keep = dropout.keep_mask(x, mask_dtype)
    return (
        base.weight,
        base.bias,
        layer.lora_A[name].weight,
        layer.lora_B[name].weight,
        float(layer.scaling[name]),
        keep,
        1.0 - probability,
    )


def install(model: nn.Module) -> int:
    """Give every PEFT LoRA ``Linear`` the fused forward, every SwiGLU MLP and Llama-style
    RMSNorm the lean one.

    LoRA layers outside the plain case (several or merged adapters, DoRA and other
    variants, a dropout tunelab did not put there), norms with a trainable, zero-holding or
    non-fp32 weight, and every module without gradients keep their own forward. Returns how
    many modules were changed.
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
        elif type(module).__name__ in LLAMA_STYLE_NORMS and not hasattr(module, "_hf_forward"):
            module._hf_forward = module.forward
            module.forward = types.MethodType(_rms_norm_forward, module)
            changed += 1
    return changed


CPU_ATTENTION = "tunelab_sdpa"


def use_cpu_attention(model: nn.Module) -> bool:
    """Switch an SDPA model to the attention below; returns whether it was switched.

    Models on another attention are left alone.
    """
    pretrained = _pretrained(model)
    if pretrained is None or pretrained.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(CPU_ATTENTION, _cpu_sdpa)
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)
    pretrained.set_attn_implementation(CPU_ATTENTION)
    return True


def takes_sample_boundaries(model: nn.Module) -> bool:
    """Whether the model's attention computes each sample of a packed row on its own when
    given ``Batch.attention_kwargs``: on the attention below, without a sliding window."""
    pretrained = _pretrained(model)
    return (
        pretrained is not None
        and pretrained.config._attn_implementation == CPU_ATTENTION
        and getattr(pretrained.config, "sliding_window", None) is None
    )


def _pretrained(model: nn.Module) -> PreTrainedModel | None:
    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def _cpu_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with two cases of a packed row done leaner.

    Given sample boundaries (``cu_seq_lens_q``) for one row, each sample attends to itself
    with a causal kernel: the block-diagonal mask would make the kernel compute every
    sample against every other and throw it away. Given a boolean mask over a multi-token
    query on a CPU, grouped key/value heads stay grouped (``enable_gqa``): transformers
    repeats them whenever a mask is given, and SDPA keeps the copies for backward (PyTorch's
    CPU flash kernel takes a mask with grouped heads as it is; on CUDA that would fall back
    to the slow math kernel). Every other case goes to transformers' own function.
    """
    plain = all(kwargs.get(k) is None for k in ("position_bias", "cache", "softcap"))
    starts = kwargs.get("cu_seq_lens_q")
    one_row = starts is not None and query.shape[0] == 1 and query.shape[2] > 1
    if plain and one_row and kwargs.get("sliding_window") is None:
        return _per_sample_attention(query, key, value, starts.tolist(), dropout, scaling)
    grouped = (
        plain
        and query.device.type == "cpu"
        and attention_mask is not None
        and attention_mask.dtype == torch.bool
        and query.shape[2] > 1
        and key.shape[1] != query.shape[1]
    )
    if not grouped:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


def _per_sample_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    starts: list[int],
    dropout: float,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each ``[starts[i], starts[i + 1])`` of a (1, heads, length,
    dim) row; returns (1, length, heads, dim) as transformers' attention functions do."""
    grouped = key.shape[1] != query.shape[1]
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=grouped,
        ).transpose(1, 2)
        for start, end in itertools.pairwise(starts)
    ]
    return torch.cat(parts, dim=1), None
