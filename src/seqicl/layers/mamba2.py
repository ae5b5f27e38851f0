"""Mamba-2 (Dao & Gu 2024): the SSD layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.layers import fla_ops
from seqicl.layers.ops import (CausalConv, HeadNorm, chunked_linear_attention, require, require_divisible,
                               require_positive)
from seqicl.layers.registry import register


@register("mamba2", kind="sequence")
class Mamba2(nn.Module):
    """The Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs"), with one B/C group.

    [z, x, B, C, dt] = in_proj(u); [x, B, C] = silu(causal_conv([x, B, C])); dt = softplus(dt + dt_bias).
    Per head h (head_dim channels of x) the SSM has a scalar-times-identity A_h = -exp(A_log_h):

        h_t = exp(dt_t A_h) h_{t-1} + dt_t B_t^T x_t,   y_t = C_t h_t + D_h x_t

    with B, C (d_state) shared by all heads. Output: out_proj(RMSNorm(y * silu(z))). Forward is
    the chunked SSD algorithm (quadratic inside chunks, states between them), ``step``
    the recurrence; initialisation of dt, A and D as in the paper's code release (dt log-uniform in
    [dt_min, dt_max], A uniform in [1, 16], D = 1).

    ``impl``: ``"auto"`` runs the SSD through fla's ``chunk_simple_gla`` (q = C, k = B, v = dt x,
    log decay dt A) where it can (CUDA, d_state and head_dim powers of two in [16, 256], float32
    only with TF32 matmuls allowed, and not where fla refuses per-step decays: Hopper GPUs with
    Triton >= 3.4.0, < 3.7.1), else the chunked reference; ``"torch"`` always the reference; ``"fla"`` fla or an error.
    """

    def __init__(self, d_model: int, max_len: int, d_state: int = 64, expand: int = 2, head_dim: int = 32,
                 conv_size: int = 4, chunk_size: int = 64, dt_min: float = 0.001, dt_max: float = 0.1,
                 norm_eps: float = 1e-5, bias: bool = False, impl: str = "auto"):
        super().__init__()
        name = self.layer_name
        fla_ops.check_impl(name, impl)
        require_positive(name, d_state=d_state, expand=expand, head_dim=head_dim, conv_size=conv_size,
                         chunk_size=chunk_size)
        d_inner = expand * d_model
        require_divisible(name, ("expand * d_model", d_inner), ("head_dim", head_dim))
        require(0 < dt_min <= dt_max, name, f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_inner, self.d_state, self.head_dim = d_inner, d_state, head_dim
        self.n_heads, self.chunk_size, self.impl = d_inner // head_dim, chunk_size, impl
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.n_heads, bias=bias)
        self.conv = CausalConv(d_inner + 2 * d_state, conv_size)
        dt = torch.exp(torch.empty(self.n_heads).uniform_(math.log(dt_min), math.log(dt_max)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log = nn.Parameter(torch.empty(self.n_heads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = HeadNorm(1, d_inner, eps=norm_eps, rms=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        """Convolved [x, B, C] (B, T, .) and raw dt (B, T, H) -> the SSD operands: C, B (B, H, T, N),
        x (B, H, T, P), dt * x (B, H, T, P) and the log decays dt * A (B, H, T)."""
        Bsz, T, _ = xbc.shape
        x, Bm, Cm = F.silu(xbc).split([self.d_inner, self.d_state, self.d_state], dim=-1)
        x = x.view(Bsz, T, self.n_heads, self.head_dim).transpose(1, 2)
        dt = F.softplus(dt + self.dt_bias).transpose(1, 2)
        shape = (Bsz, self.n_heads, T, self.d_state)
        log_decay = -self.A_log.exp()[:, None] * dt
        return Cm[:, None].expand(shape), Bm[:, None].expand(shape), x, x * dt[..., None], log_decay

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """SSM output y and input x (B, H, T, P), gate z (B, T, d_inner) -> (B, T, d_model)."""
        y = (y + self.D[:, None, None] * x).transpose(1, 2).flatten(2)
        return self.out_proj(self.norm((y * F.silu(z))[..., None, :])[..., 0, :])

    def _split(self, u: torch.Tensor):
        return self.in_proj(u).split([self.d_inner, self.d_inner + 2 * self.d_state, self.n_heads], dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z, xbc, dt = self._split(u)
        C, B, x, dx, log_decay = self._ssm_inputs(self.conv(xbc), dt)
        if fla_ops.use_fla(self, u, lambda: fla_ops.simple_gla_unsupported(self.d_state, self.head_dim,
                                                                          fla_ops.work_dtype(C, B, dx))):
            return self._output(fla_ops.simple_gla(C, B, dx, log_decay), x, z)
        y, _ = chunked_linear_attention(C, B, dx, log_decay=log_decay, chunk_size=self.chunk_size)
        return self._output(y, x, z)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        ssm = torch.zeros(batch_size, self.n_heads, self.d_state, self.head_dim, device=device, dtype=dtype)
        return {"ssm": ssm, "conv": self.conv.init_state(batch_size, device=device, dtype=dtype)}

    def step(self, u: torch.Tensor, state: dict):
        z, xbc, dt = self._split(u)
        xbc, conv = self.conv.step(xbc, state["conv"])
        C, B, x, dx, log_decay = self._ssm_inputs(xbc[:, None], dt[:, None])
        ssm = log_decay.exp()[..., None] * state["ssm"] + B.transpose(-1, -2) @ dx
        return self._output(C @ ssm, x, z[:, None])[:, 0], {"ssm": ssm, "conv": conv}

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.d_state * self.head_dim + self.conv.state_size(seq_len)
