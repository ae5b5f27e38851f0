"""An LSTM (Hochreiter and Schmidhuber 1997) as the sequence mixer of a residual block."""

from __future__ import annotations

import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers.registry import register


@register("lstm", kind="sequence")
class LSTM(nn.Module):
    """``torch.nn.LSTM`` with hidden size d_model: the block's normalised input -> LSTM output.

    Causal by construction. ``step`` runs the same module one position at a time, so training
    and incremental decoding share one set of weights. ``n_layers`` > 1 stacks LSTMs inside
    the mixer (``dropout`` between them).

    ``init``: ``torch`` keeps ``torch.nn.LSTM``'s uniform initialisation; ``xavier_orthogonal``
    draws the input weights Glorot-uniform and the recurrent weights orthogonal, with zero biases
    except the forget gate's, set to 1 (Keras' initialisation, which seq_icl's LSTM uses).
    """

    def __init__(self, d_model: int, max_len: int, n_layers: int = 1, dropout: float = 0.0,
                 bias: bool = True, init: str = "torch"):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"lstm: n_layers must be a positive integer, got {n_layers}")
        if init not in ("torch", "xavier_orthogonal"):
            raise ConfigError(f"lstm: init must be torch or xavier_orthogonal, got {init!r}")
        self.d_model, self.n_layers = d_model, n_layers
        self.lstm = nn.LSTM(d_model, d_model, num_layers=n_layers, bias=bias, batch_first=True,
                            dropout=dropout if n_layers > 1 else 0.0)
        if init == "xavier_orthogonal":
            self._xavier_orthogonal()

    def _xavier_orthogonal(self) -> None:
        for name, p in self.lstm.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
                if name.startswith("bias_ih"):   # gates ordered input, forget, cell, output
                    nn.init.ones_(p[self.d_model:2 * self.d_model])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and not self.training and torch.is_grad_enabled():
            # cuDNN's RNN backward refuses eval mode; gradients in eval mode (analysis, checks)
            # go through the native kernels instead.
            with torch.backends.cudnn.flags(enabled=False):
                return self.lstm(x)[0]
        return self.lstm(x)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """Hidden and cell states, (n_layers, batch, d_model) each, as ``torch.nn.LSTM`` takes them."""
        zeros = torch.zeros(self.n_layers, batch_size, self.d_model, device=device, dtype=dtype)
        return {"h": zeros, "c": zeros.clone()}

    def step(self, x: torch.Tensor, state: dict):
        y, (h, c) = self.lstm(x[:, None], (state["h"], state["c"]))
        return y[:, 0], {"h": h, "c": c}

    def state_size(self, seq_len: int) -> int:
        return 2 * self.n_layers * self.d_model
