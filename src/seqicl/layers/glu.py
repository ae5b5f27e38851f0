"""The gated linear unit of Dauphin, Fan, Auli and Grangier (2017), "Language modeling with gated
convolutional networks", as a feed-forward state mixer."""

from __future__ import annotations

import torch

from seqicl.layers.mlp import GatedFFN
from seqicl.layers.registry import register


@register("glu", kind="state")
class GLU(GatedFFN):
    """W_2 ((W x + b) * sigmoid(V x + c)) (+ b_2), hidden width ``expand * d_model``.

    The default expansion 8/3 gives about the parameter count of an MLP with expansion 4.
    """

    def __init__(self, d_model: int, max_len: int, expand: float = 8 / 3, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__(d_model, expand, dropout, bias)

    def combine(self, value, gate):
        return value * torch.sigmoid(gate)
