"""The Mamba (selective SSM) block of Gu and Dao (2023), "Mamba: linear-time sequence modeling
with selective state spaces" (Mamba-1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers import ops, triton_scan
from seqicl.layers.registry import register


@register("mamba", kind="sequence")
class Mamba(nn.Module):
    """x, z = in_proj(u);  x = SiLU(causal depthwise conv(x));  y = SSM(x) * SiLU(z);  out_proj(y).

    The selective SSM (the paper's Algorithm 2), per inner channel d and state n:
        dt = softplus(W_dt (W_r x) + b_dt)  (rank dt_rank),  B_t = W_B x_t,  C_t = W_C x_t,
        h_t = exp(dt_t A) h_t-1 + dt_t B_t x_t,   y_t = C_t . h_t + D x_t,
    with A = -exp(A_log) initialised to -(1, ..., d_state) for every channel (S4D-Real), D = 1,
    and b_dt set so that dt starts log-uniform in [dt_min, dt_max]. The forward pass solves the
    recurrence with ``ops.linear_scan`` in chunks of ``chunk_size``; with ``impl="auto"`` on CUDA,
    when triton imports and d_state <= ``triton_scan.SELECTIVE_MAX_STATE``, the Triton kernel
    ``triton_scan.selective_scan`` computes y without materialising the (batch, T, d_inner,
    d_state) states.
    """

    def __init__(self, d_model: int, max_len: int, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, dt_rank: int | str = "auto", dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, conv_bias: bool = True,
                 bias: bool = False, chunk_size: int = 32, impl: str = "auto"):
        super().__init__()
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or dt_rank < 1:
            raise ConfigError(f"mamba: dt_rank must be a positive integer or auto, got {dt_rank!r}")
        for pname, value in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                             ("chunk_size", chunk_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"mamba: {pname} must be a positive integer, got {value!r}")
        if not 0 < dt_min <= dt_max:
            raise ConfigError(f"mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        ops.require(impl in ("auto", "torch"), "mamba", f"impl must be auto or torch, got {impl!r}")
        self.d_inner, self.d_state, self.d_conv = expand * d_model, d_state, d_conv
        self.dt_rank, self.chunk_size, self.impl = dt_rank, chunk_size, impl
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        bound = d_conv ** -0.5                                # torch.nn.Conv1d's initialisation
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, d_conv).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner).uniform_(-bound, bound)) if conv_bias else None
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner)
        self.dt_proj.keep_init = True                         # its bias sets the initial step sizes
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))     # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def _ssm_params(self, x: torch.Tensor):
        """dt (..., d_inner), A (d_inner, d_state), B and C (..., d_state)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt)), -torch.exp(self.A_log), B, C

    def _ssm_inputs(self, x: torch.Tensor):
        """Decays exp(dt A) (..., d_inner, d_state), inputs dt B x (same shape) and C (..., d_state)."""
        dt, A, B, C = self._ssm_params(x)
        return torch.exp(dt[..., None] * A), (dt * x)[..., None] * B[..., None, :], C

    def _gate_out(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj((y + self.D * x) * F.silu(z))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(ops.causal_depthwise_conv(x, self.conv_weight, self.conv_bias))
        if (self.impl == "auto" and self.d_state <= triton_scan.SELECTIVE_MAX_STATE
                and triton_scan.available(x)):
            return self._gate_out(triton_scan.selective_scan(x, *self._ssm_params(x)), x, z)
        decay, inp, C = self._ssm_inputs(x)
        h = ops.linear_scan(decay, inp, self.chunk_size)
        return self._gate_out(torch.einsum("btdn,btn->btd", h, C), x, z)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """The last d_conv - 1 inputs of the convolution and the SSM state."""
        return {"conv": torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
                "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype)}

    def step(self, u: torch.Tensor, state: dict):
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, conv = ops.depthwise_conv_step(x, state["conv"], self.conv_weight, self.conv_bias)
        x = F.silu(x)
        decay, inp, C = self._ssm_inputs(x)
        h = decay * state["ssm"] + inp
        y = torch.einsum("bdn,bn->bd", h, C)
        return self._gate_out(y, x, z), {"conv": conv, "ssm": h}

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.d_conv - 1 + self.d_state)
