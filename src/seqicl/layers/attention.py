"""Causal multi-head softmax attention (Vaswani et al. 2017) with MQA/GQA and rotary positions."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers.registry import register


@functools.lru_cache(maxsize=64)
def rotary_tables(seq_len: int, dim: int, base: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (seq_len, dim/2) of rotary position embeddings (Su et al. 2021).

    Cached per (length, size, device, dtype): recomputing them costs several kernel launches a
    layer and step, which dominates small models on a GPU.
    """
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of x (batch, heads, seq, d) by position."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_attention_reference(q, k, v, window: int | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, written out; (batch, heads, seq, d) inputs."""
    T = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    i = torch.arange(T, device=q.device)
    mask = i[None, :] > i[:, None]
    if window is not None:
        mask = mask | (i[:, None] - i[None, :] >= window)
    scores = scores.masked_fill(mask, float("-inf"))
    return F.dropout(scores.softmax(dim=-1), dropout_p) @ v


@register("attention", kind="sequence")
class Attention(nn.Module):
    """Multi-head causal attention.

    ``n_kv_heads`` < ``n_heads`` gives grouped-query attention (1: multi-query). ``positions``
    is ``"rotary"`` (rotary embeddings on queries and keys) or ``"none"`` (positions then come
    from the backbone, if at all). ``impl``: ``"auto"`` uses ``scaled_dot_product_attention``,
    ``"torch"`` the written-out reference.
    """

    IMPLS = ("auto", "torch")

    def __init__(self, d_model: int, max_len: int, n_heads: int = 2, n_kv_heads: int | None = None,
                 positions: str = "rotary", rotary_base: float = 10000.0, dropout: float = 0.0,
                 bias: bool = False, impl: str = "auto"):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or d_model % n_heads:
            raise ConfigError(f"{self.layer_name}: d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ConfigError(f"{self.layer_name}: n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
        if positions not in ("rotary", "none"):
            raise ConfigError(f"{self.layer_name}: positions must be rotary or none, got {positions!r}")
        if impl not in self.IMPLS:
            raise ConfigError(f"{self.layer_name}: impl must be {', '.join(self.IMPLS[:-1])} or {self.IMPLS[-1]}, "
                              f"got {impl!r}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        if positions == "rotary" and self.head_dim % 2:
            raise ConfigError(f"{self.layer_name}: rotary positions need an even head dimension, got {self.head_dim}")
        self.positions, self.rotary_base, self.impl = positions, rotary_base, impl
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def qkv(self, x: torch.Tensor, offset: int = 0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(x).view(B, T, 2, self.n_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.positions == "rotary":
            # Eagerly the tables come from the cache; under torch.compile they are computed inside
            # the graph (where they cost nothing), as the compiler does not trace through the cache.
            tables = rotary_tables.__wrapped__ if torch.compiler.is_compiling() else rotary_tables
            cos, sin = tables(offset + T, self.head_dim, self.rotary_base, x.device, q.dtype)
            cos, sin = cos[offset:], sin[offset:]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def _expand_kv(self, k, v):
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return k, v

    def _attend(self, q, k, v, dropout_p: float) -> torch.Tensor:
        """Causal attention of q (B, H, T, d) over k, v (B, H_kv, T, d): the dispatch point between
        SDPA (grouped-query heads shared inside the kernel) and the reference."""
        if self.impl == "torch":
            return causal_attention_reference(q, *self._expand_kv(k, v), dropout_p=dropout_p)
        return self._sdpa(q, k, v, dropout_p, is_causal=True)

    def _sdpa(self, q, k, v, dropout_p: float, **mask) -> torch.Tensor:
        """``scaled_dot_product_attention`` with grouped-query key/value heads shared inside the
        kernel; ``mask``: ``is_causal`` or ``attn_mask``."""
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, enable_gqa=self.n_kv_heads != self.n_heads,
                                              **mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x)
        y = self._attend(q, k, v, self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))

    # Incremental decoding with a key/value cache: the state grows by one position per step.
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        empty = torch.zeros(batch_size, self.n_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone()}

    def step(self, x: torch.Tensor, state: dict):
        B, D = x.shape
        t = state["k"].shape[2]
        q, k, v = self.qkv(x[:, None], offset=t)
        k_all, v_all = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
        ke, ve = self._expand_kv(k_all, v_all)
        y = F.scaled_dot_product_attention(q, ke, ve)
        return self.out_proj(y.transpose(1, 2).reshape(B, D)), {"k": k_all, "v": v_all}

    def state_size(self, seq_len: int) -> int:
        """Elements carried per sequence at inference: the key/value cache after seq_len tokens."""
        return 2 * seq_len * self.n_kv_heads * self.head_dim
