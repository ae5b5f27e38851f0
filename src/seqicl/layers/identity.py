"""``identity``: no state mixer."""

from __future__ import annotations

import torch
from torch import nn

from seqicl.layers.registry import register


@register("identity", kind="state")
class Identity(nn.Module):
    """A block with ``identity`` as its state mixer has none: ``models.stack.build_layer`` builds
    nothing for it. Built on its own, it adds nothing to the residual stream: zeros of the
    input's shape, x + identity(x) == x (computed from x, so that its gradient is zero)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0
