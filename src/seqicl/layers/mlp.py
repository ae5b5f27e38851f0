"""State mixers: position-wise feed-forward networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers.registry import register

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def _hidden(d_model: int, expand: float, multiple: int = 8) -> int:
    return max(multiple, int(round(d_model * expand / multiple)) * multiple)


@register("mlp", kind="state")
class MLP(nn.Module):
    """Linear -> activation -> linear, hidden width ``expand * d_model``."""

    def __init__(self, d_model: int, max_len: int, expand: float = 4.0, activation: str = "gelu",
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"mlp: activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        hidden = _hidden(d_model, expand)
        self.act = _ACTIVATIONS[activation]
        self.fc1 = nn.Linear(d_model, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class GatedFFN(nn.Module):
    """The shared shape of the gated feed-forward layers: W_down combine(W_in x), the input
    projection giving two halves of width ``expand * d_model`` that ``combine`` merges."""

    def __init__(self, d_model: int, expand: float, dropout: float, bias: bool):
        super().__init__()
        hidden = _hidden(d_model, expand)
        self.proj = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def combine(self, first, second):
        raise NotImplementedError

    def forward(self, x):
        return self.drop(self.down(self.combine(*self.proj(x).chunk(2, dim=-1))))


@register("swiglu", kind="state")
class SwiGLU(GatedFFN):
    """SwiGLU feed-forward (Shazeer 2020): W2 (silu(W1 x) * W3 x), hidden ``expand * d_model``.

    The default expansion 8/3 gives about the parameter count of an MLP with expansion 4.
    """

    def __init__(self, d_model: int, max_len: int, expand: float = 8 / 3, dropout: float = 0.0,
                 bias: bool = False):
        super().__init__(d_model, expand, dropout, bias)

    def combine(self, gate, up):
        return F.silu(gate) * up
