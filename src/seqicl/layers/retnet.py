"""Multi-scale retention, the sequence mixer of RetNet (Sun et al. 2023)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.layers.attention import apply_rotary, rotary_tables
from seqicl.layers import fla_ops
from seqicl.layers.ops import HeadNorm, chunked_linear_attention, require, require_divisible, require_positive
from seqicl.layers.registry import register


@register("retnet", kind="sequence")
class RetNet(nn.Module):
    """Multi-scale retention (Sun et al. 2023, "Retentive network", Sec. 2.1-2.2), per head h:

        S_t = gamma_h S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(d),   gamma_h = 1 - 2^(-5-h)
        y = (swish(x W_G) * GroupNorm(o)) W_O

    i.e. the parallel form (Q K^T * D) V with D_ts = gamma^(t-s). q and k are rotated by position
    (``positions="rotary"``, the paper's e^(i n theta); ``"none"`` leaves them as they are); v has
    ``expand_v`` times the key width (2 in the paper). Forward is chunkwise, ``step`` the recurrence.

    ``impl``: ``"auto"`` runs the retention through fla's ``chunk_retention`` (which fixes the
    same decays gamma_h) where it can (CUDA, key and value sizes powers of two in [16, 256], float32 only with
    TF32 matmuls allowed),
    else the chunkwise reference; ``"torch"`` always the reference; ``"fla"`` fla or an error.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 4, expand_v: int = 2,
                 positions: str = "rotary", rotary_base: float = 10000.0, chunk_size: int = 64,
                 norm_eps: float = 1e-5, bias: bool = False, impl: str = "auto"):
        super().__init__()
        name = self.layer_name
        fla_ops.check_impl(name, impl)
        require_positive(name, n_heads=n_heads, expand_v=expand_v, chunk_size=chunk_size)
        require_divisible(name, ("d_model", d_model), ("n_heads", n_heads))
        require(positions in ("rotary", "none"), name, f"positions must be rotary or none, got {positions!r}")
        self.n_heads, self.key_dim = n_heads, d_model // n_heads
        require(positions == "none" or self.key_dim % 2 == 0, name,
                f"rotary positions need an even head dimension, got {self.key_dim}")
        self.value_dim = expand_v * self.key_dim
        self.positions, self.rotary_base, self.chunk_size, self.impl = positions, rotary_base, chunk_size, impl
        self.qk_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, n_heads * self.value_dim, bias=bias)
        self.g_proj = nn.Linear(d_model, n_heads * self.value_dim, bias=bias)
        self.norm = HeadNorm(n_heads, self.value_dim, eps=norm_eps)
        self.out_proj = nn.Linear(n_heads * self.value_dim, d_model, bias=bias)

    def log_gamma(self, like: torch.Tensor) -> torch.Tensor:
        """log gamma_h (n_heads,), gamma_h = 1 - 2^(-5-h), in the dtype and device of ``like``."""
        h = torch.arange(self.n_heads, device=like.device, dtype=like.dtype)
        return torch.log1p(-(2.0 ** (-5.0 - h)))

    def _project(self, x: torch.Tensor, offset: int = 0):
        """x (B, T, D) -> q, k (B, H, T, d_k), v (B, H, T, d_v)."""
        B, T, _ = x.shape
        q, k = self.qk_proj(x).view(B, T, 2, self.n_heads, self.key_dim).permute(2, 0, 3, 1, 4)
        v = self.v_proj(x).view(B, T, self.n_heads, self.value_dim).transpose(1, 2)
        if self.positions == "rotary":
            cos, sin = rotary_tables(offset + T, self.key_dim, self.rotary_base, x.device, q.dtype)
            q, k = apply_rotary(q, cos[offset:], sin[offset:]), apply_rotary(k, cos[offset:], sin[offset:])
        return q / math.sqrt(self.key_dim), k, v

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        y = self.norm(o.transpose(1, 2)).flatten(2)
        return self.out_proj(F.silu(self.g_proj(x)) * y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x)
        if fla_ops.use_fla(self, x, lambda: fla_ops.retention_unsupported(self.key_dim, self.value_dim,
                                                                         fla_ops.work_dtype(q, k, v))):
            return self._output(x, fla_ops.retention(q, k, v))
        log_decay = self.log_gamma(q)[:, None].expand(x.shape[0], -1, x.shape[1])
        o, _ = chunked_linear_attention(q, k, v, log_decay=log_decay, chunk_size=self.chunk_size)
        return self._output(x, o)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        S = torch.zeros(batch_size, self.n_heads, self.key_dim, self.value_dim, device=device, dtype=dtype)
        return {"S": S, "position": 0}

    def step(self, x: torch.Tensor, state: dict):
        q, k, v = self._project(x[:, None], offset=state["position"])
        gamma = self.log_gamma(q).exp()[:, None, None]
        S = gamma * state["S"] + k.transpose(-1, -2) @ v
        return self._output(x[:, None], q @ S)[:, 0], {"S": S, "position": state["position"] + 1}

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.key_dim * self.value_dim
