"""A new sequence mixer in a user's file: a short causal depthwise convolution, gated."""

import torch
from torch import nn

from seqicl.layers import register


@register("gated_conv", kind="sequence")
class GatedConvMixer(nn.Module):
    """y = W_out (conv(W_v x) * sigmoid(W_g x)), the convolution seeing positions t-k+1 .. t only."""

    def __init__(self, d_model: int, max_len: int, kernel_size: int = 4):
        super().__init__()
        self.in_proj = nn.Linear(d_model, 2 * d_model)
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, padding=kernel_size - 1)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, gate = self.in_proj(x).chunk(2, dim=-1)
        v = self.conv(v.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
        return self.out_proj(v * torch.sigmoid(gate))
