"""The gated impulse linear recurrence (GILR) of Martin and Cundy (2018), "Parallelizing linear
recurrent neural nets over sequence length"."""

from __future__ import annotations

import torch
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
    """

    def __init__(self, d_model: int, max_len: int, expand: int = 1, activation: str = "tanh",
                 chunk_size: int = 64, bias: bool = True, impl: str = "auto"):
        super().__init__()
        if expand < 1:
            raise ConfigError(f"gilr: expand must be a positive integer, got {expand}")
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"gilr: activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if chunk_size < 1:
            raise ConfigError(f"gilr: chunk_size must be a positive integer, got {chunk_size}")
        ops.require(impl in ("auto", "torch"), "gilr", f"impl must be auto or torch, got {impl!r}")
        self.d_hidden, self.chunk_size, self.impl = expand * d_model, chunk_size, impl
        self.act = _ACTIVATIONS[activation]
        self.in_proj = nn.Linear(d_model, 2 * self.d_hidden, bias=bias)
        self.out_proj = nn.Linear(self.d_hidden, d_model, bias=bias)

    def _gate_impulse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decay g and the input (1 - g) z of the recurrence."""
        g, z = self.in_proj(x).chunk(2, dim=-1)
        g = torch.sigmoid(g)
        return g, (1 - g) * self.act(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, b = self._gate_impulse(x)
        if self.impl == "auto" and triton_scan.available(g, b):
            return self.out_proj(triton_scan.linear_scan(g, b))
        return self.out_proj(ops.linear_scan(g, b, self.chunk_size))

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_hidden, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor):
        g, b = self._gate_impulse(x)
        state = g * state + b
        return self.out_proj(state), state

    def state_size(self, seq_len: int) -> int:
        return self.d_hidden
