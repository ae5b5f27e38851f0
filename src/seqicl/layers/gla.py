"""Gated linear attention, GLA (Yang et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.layers import fla_ops
from seqicl.layers.ops import HeadNorm, chunked_linear_attention, require, require_divisible, require_positive
from seqicl.layers.registry import register


@register("gla", kind="sequence")
class GLA(nn.Module):
    """The GLA layer (Yang et al. 2024, "Gated linear attention transformers with hardware-efficient
    training"), per head:

        alpha_t = sigmoid(x_t W_a1 W_a2 + b_a)^(1/gate_temperature)    (low rank ``gate_rank``)
        S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(d_k)
        y_t = (GroupNorm(o_t) * swish(x_t W_r + b_r)) W_o

    with d_k = expand_k * d_model / n_heads and d_v = expand_v * d_model / n_heads. Forward is
    the chunkwise form in log space (``chunk_size`` steps a chunk, sub-chunks of 16); ``step`` is
    the recurrence. The 1/sqrt(d_k) query scale is the usual attention scaling.

    ``impl``: ``"auto"`` runs the forward through fla's ``chunk_gla`` where it can (CUDA, head
    sizes powers of two in [16, 256], float32 only with TF32 matmuls allowed), else the chunkwise
    reference; ``"torch"`` always the reference; ``"fla"`` fla or an error.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 4, expand_k: float = 0.5,
                 expand_v: float = 1.0, gate_rank: int = 16, gate_temperature: float = 16.0,
                 chunk_size: int = 64, norm_eps: float = 1e-5, bias: bool = False, impl: str = "auto"):
        super().__init__()
        name = self.layer_name
        fla_ops.check_impl(name, impl)
        require_positive(name, n_heads=n_heads, gate_rank=gate_rank, chunk_size=chunk_size)
        key_dim, value_dim = d_model * expand_k, d_model * expand_v
        for label, dim in (("d_model * expand_k", key_dim), ("d_model * expand_v", value_dim)):
            require(dim == int(dim) and dim >= 1, name, f"{label}={dim} must be a positive integer")
            require_divisible(name, (label, int(dim)), ("n_heads", n_heads))
        require(gate_temperature > 0, name, f"gate_temperature must be > 0, got {gate_temperature!r}")
        self.n_heads, self.key_dim, self.value_dim = n_heads, int(key_dim) // n_heads, int(value_dim) // n_heads
        self.gate_temperature, self.chunk_size, self.impl = gate_temperature, chunk_size, impl
        self.q_proj = nn.Linear(d_model, int(key_dim), bias=bias)
        self.k_proj = nn.Linear(d_model, int(key_dim), bias=bias)
        self.v_proj = nn.Linear(d_model, int(value_dim), bias=bias)
        self.alpha_proj = nn.Sequential(nn.Linear(d_model, gate_rank, bias=False), nn.Linear(gate_rank, int(key_dim)))
        self.r_proj = nn.Linear(d_model, int(value_dim))
        self.norm = HeadNorm(n_heads, self.value_dim, eps=norm_eps)
        self.out_proj = nn.Linear(int(value_dim), d_model, bias=bias)

    def _project(self, x: torch.Tensor):
        """x (B, T, D) -> q, k, log alpha (B, H, T, d_k) and v (B, H, T, d_v)."""
        def heads(t):
            return t.view(*x.shape[:2], self.n_heads, -1).transpose(1, 2)

        q = heads(self.q_proj(x)) * self.key_dim ** -0.5
        log_alpha = heads(F.logsigmoid(self.alpha_proj(x))) / self.gate_temperature
        return q, heads(self.k_proj(x)), heads(self.v_proj(x)), log_alpha

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), o (B, H, T, d_v) -> (B, T, D)."""
        y = self.norm(o.transpose(1, 2)).flatten(2)
        return self.out_proj(y * F.silu(self.r_proj(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, log_alpha = self._project(x)
        if fla_ops.use_fla(self, x, lambda: fla_ops.gla_unsupported(self.key_dim, self.value_dim,
                                                                   fla_ops.work_dtype(q, k, v))):
            return self._output(x, fla_ops.gla(q, k, v, log_alpha))
        o, _ = chunked_linear_attention(q, k, v, log_decay=log_alpha, chunk_size=self.chunk_size)
        return self._output(x, o)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_heads, self.key_dim, self.value_dim, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor):
        q, k, v, log_alpha = self._project(x[:, None])
        state = log_alpha.exp().transpose(-1, -2) * state + k.transpose(-1, -2) @ v
        return self._output(x[:, None], q @ state)[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.key_dim * self.value_dim
