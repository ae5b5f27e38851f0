"""The gated linear unit of Dauphin, Fan, Auli and Grangier (2017), "Language modeling with gated
convolutional networks", as a feed-forward state mixer."""

from __future__ import annotations

import torch
from torch import nn

from seqicl.layers.mlp import _hidden
from seqicl.layers.registry import register


@register("glu", kind="state")
class GLU(nn.Module):
    """W_2 ((W x + b) * sigmoid(V x + c)) (+ b_2), hidden width ``expand * d_model``.

    The default expansion 8/3 gives about the parameter count of an MLP with expansion 4.
    """

    def __init__(self, d_model: int, max_len: int, expand: float = 8 / 3, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        hidden = _hidden(d_model, expand)
        self.value_gate = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        value, gate = self.value_gate(x).chunk(2, dim=-1)
        return self.drop(self.down(value * torch.sigmoid(gate)))
