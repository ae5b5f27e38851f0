"""Rectified linear attention, ReLA (Zhang, Titov & Sennrich 2021)."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqicl.layers.attention import Attention
from seqicl.layers.ops import HeadNorm
from seqicl.layers.registry import register


@register("rela", kind="sequence")
class ReLA(Attention):
    """ReLA (Zhang et al. 2021, "Sparse attention with linear units"), causal.

    Softmax is replaced by a ReLU: o_t = sum_{s<=t} relu(q_t . k_s / sqrt(d)) v_s. The scores are
    unnormalised, so each head's output goes through RMSNorm (the paper's normalisation);
    with ``gate`` (ReLA-g) it is then scaled by sigmoid(x_t W_g). Heads, GQA and rotary positions
    are ``attention``'s. ReLU scores have no finite-dimensional recurrent state, so incremental
    decoding uses ``attention``'s key/value cache.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 2, n_kv_heads: int | None = None,
                 positions: str = "rotary", rotary_base: float = 10000.0, gate: bool = True,
                 norm_eps: float = 1e-6, bias: bool = False):
        super().__init__(d_model, max_len, n_heads=n_heads, n_kv_heads=n_kv_heads, positions=positions,
                         rotary_base=rotary_base, bias=bias, impl="torch")
        self.norm = HeadNorm(n_heads, self.head_dim, eps=norm_eps, rms=True)
        self.gate = nn.Linear(d_model, d_model, bias=bias) if gate else None

    def _mix(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
        """x (B, T, D); q (B, H, T, d); k, v (B, H, S, d) -> (B, T, D)."""
        k, v = self._expand_kv(k, v)
        scores = torch.relu(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim))
        if causal:
            scores = scores.tril()
        y = self.norm((scores @ v).transpose(1, 2))
        B, T, H, d = y.shape
        y = y.reshape(B, T, H * d)
        if self.gate is not None:
            y = torch.sigmoid(self.gate(x)) * y
        return self.out_proj(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, *self.qkv(x), causal=True)

    def step(self, x: torch.Tensor, state: dict):
        q, k, v = self.qkv(x[:, None], offset=state["k"].shape[2])
        k_all, v_all = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
        return self._mix(x[:, None], q, k_all, v_all, causal=False)[:, 0], {"k": k_all, "v": v_all}
