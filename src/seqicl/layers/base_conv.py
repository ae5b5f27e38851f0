"""BaseConv, the gated convolution of Zoology (Arora et al. 2023)."""

from __future__ import annotations

import torch
from torch import nn

from seqicl.layers.ops import CausalConv, require, require_positive
from seqicl.layers.registry import register


@register("base_conv", kind="sequence")
class BaseConv(nn.Module):
    """BaseConv (Arora et al. 2023, "Zoology: measuring and improving recall in efficient language
    models"): y = (x W_1 + b_1) * (h * (x W_2) + b_2), with h a learned causal filter per
    channel, explicit and as long as the sequence (``kernel_size`` null: max_len, applied by FFT),
    or short (e.g. ``kernel_size=3``, the short convolutions of Based). ``step`` carries the last
    kernel_size - 1 inputs of the convolution.
    """

    def __init__(self, d_model: int, max_len: int, kernel_size: int | None = None, bias: bool = True):
        super().__init__()
        kernel_size = max_len if kernel_size is None else kernel_size
        require_positive(self.layer_name, kernel_size=kernel_size)
        require(kernel_size <= max_len, self.layer_name, f"kernel_size={kernel_size} is larger than max_len={max_len}")
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.conv_proj = nn.Linear(d_model, d_model, bias=False)
        self.conv = CausalConv(d_model, kernel_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.conv(self.conv_proj(x))

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return self.conv.init_state(batch_size, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor):
        y, state = self.conv.step(self.conv_proj(x), state)
        return self.proj(x) * y, state

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size(seq_len)
