"""Dropout for LoRA inputs whose CPU masks are cheap to draw and exact to resume."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# the bit pattern of 1.0 in bfloat16
BF16_ONE = np.uint16(0x3F80)


class FastDropout(nn.Module):
    """Dropout whose CPU masks come from 16-bit draws of numpy's global generator.

    LoRA drops out each adapted layer's input: ~200 masks per step on a 30-layer model,
    and on a CPU drawing them is most of dropout's cost. numpy's generator makes 16-bit
    draws about 2x faster than torch's (and 6x faster than ``bernoulli_``); its state is
    saved in every checkpoint like torch's, so resuming stays exact. The drop probability
    is p rounded to 1/65536. On a GPU this is plain ``F.dropout``. Under gradient
    checkpointing the masks come from torch's generator instead (``recomputable``), whose
    state checkpointing restores, so a recomputed layer drops the same elements.
    """

    def __init__(self, p: float, recomputable: bool = False) -> None:
        super().__init__()
        self.p = p
        self.recomputable = recomputable
        self.threshold = round(p * 65536)
        self.scale = 1.0 / (1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero each element with probability p, scale the rest by 1 / (1 - p)."""
        if not self.training or self.p == 0:
            return x
        if self._torch_generator(x):
            return nn.functional.dropout(x, self.p, training=True)
        return torch.where(self.keep_mask(x), x, 0.0).mul_(self.scale)

    def keep_mask(self, x: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """Shaped like ``x``: kept (True, or 1.0 in a bf16 mask) with probability 1 - p.

        A bf16 mask multiplies bf16 tensors several times faster than a boolean mask
        selects from them on a CPU.
        """
        if self._torch_generator(x):
            return torch.empty(x.shape, dtype=dtype, device=x.device).bernoulli_(1 - self.p)
        draws = np.random.randint(0, 1 << 16, size=tuple(x.shape), dtype=np.uint16)
        kept = draws >= self.threshold
        if dtype == torch.bfloat16:
            return torch.from_numpy(kept * BF16_ONE).view(torch.bfloat16)
        return torch.from_numpy(kept).to(dtype)

    def _torch_generator(self, x: torch.Tensor) -> bool:
        return x.device.type != "cpu" or self.recomputable


def use_fast_dropout(model: nn.Module, recomputable: bool) -> None:
    """Replace the ``nn.Dropout`` of every LoRA layer in ``model`` with ``FastDropout``."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, layer in dropouts.items():
                if isinstance(layer, nn.Dropout):
                    dropouts[name] = FastDropout(layer.p, recomputable)
