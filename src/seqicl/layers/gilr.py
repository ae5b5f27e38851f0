"""The gated impulse linear recurrence (GILR) of Martin and Cundy (2018), "Parallelizing linear
recurrent neural nets over sequence length"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers import ops, triton_scan
from seqicl.layers.registry import register

_ACTIVATIONS = {"tanh": torch.tanh, "linear": lambda z: z}


@register("gilr", kind="sequence")
class GILR(nn.Module):
    """h_t = g_t * h_t-1 + (1 - g_t) * z_t,  g_t = sigmoid(W_g x_t),  z_t = tanh(W_z x_t);  y_t = W_o h_t.

    The gate and the impulse depend on the input only, so the recurrence is linear in h and is
    solved by a parallel scan (``ops.linear_scan``, chunks of ``chunk_size``). ``expand`` sets the
    hidden width; ``activation`` is ``tanh`` (the paper) or ``linear``. ``impl``: ``"auto"`` solves
    it with the Triton kernel ``triton_scan.linear_scan`` on CUDA when triton imports, ``"torch"``
    always with the reference.

    ``output_gate=True`` reads the state through a gated, normalised output instead:
    y_t = W_o LayerNorm(dropout(h_t * silu(W_u x_t))), the block seq_icl's experiments call GILR
    (there with ``activation="linear"`` and ``dropout=0.2``). ``dropout`` applies to that output only.
    """

    def __init__(self, d_model: int, max_len: int, expand: int = 1, activation: str = "tanh",
                 chunk_size: int = 64, bias: bool = True, output_gate: bool = False, dropout: float = 0.0,
                 impl: str = "auto"):
        super().__init__()
        if expand < 1:
            raise ConfigError(f"gilr: expand must be a positive integer, got {expand}")
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"gilr: activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if chunk_size < 1:
            raise ConfigError(f"gilr: chunk_size must be a positive integer, got {chunk_size}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"gilr: dropout must be in [0, 1), got {dropout}")
        if dropout and not output_gate:
            raise ConfigError("gilr: dropout applies to the gated output only; set output_gate=true or dropout=0")
        ops.require(impl in ("auto", "torch"), "gilr", f"impl must be auto or torch, got {impl!r}")
        self.d_hidden, self.chunk_size, self.impl = expand * d_model, chunk_size, impl
        self.act = _ACTIVATIONS[activation]
        self.output_gate = output_gate
        self.in_proj = nn.Linear(d_model, (3 if output_gate else 2) * self.d_hidden, bias=bias)
        if output_gate:
            self.dropout = nn.Dropout(dropout)
            self.norm = nn.LayerNorm(self.d_hidden)
        self.out_proj = nn.Linear(self.d_hidden, d_model, bias=bias)

    def _gate_impulse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The decay g and the input (1 - g) z of the recurrence, and the output gate's input."""
        if self.output_gate:
            g, z, u = self.in_proj(x).chunk(3, dim=-1)
        else:
            (g, z), u = self.in_proj(x).chunk(2, dim=-1), None
        g = torch.sigmoid(g)
        return g, (1 - g) * self.act(z), u

    def _read(self, h: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        if self.output_gate:
            h = self.norm(self.dropout(h * F.silu(u)))
        return self.out_proj(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, b, u = self._gate_impulse(x)
        if self.impl == "auto" and triton_scan.available(g, b):
            return self._read(triton_scan.linear_scan(g, b), u)
        return self._read(ops.linear_scan(g, b, self.chunk_size), u)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor):
        g, b, u = self._gate_impulse(x)
        state = g * state + b
        return self._read(state, u), state

    def state_size(self, seq_len: int) -> int:
        return self.d_hidden
