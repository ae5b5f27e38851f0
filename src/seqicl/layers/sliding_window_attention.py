"""Causal sliding-window attention: each position attends to its last ``window_size`` positions."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from seqicl.layers.attention import Attention, causal_attention_reference
from seqicl.layers.ops import require, require_positive
from seqicl.layers.registry import register


@functools.lru_cache(maxsize=16)
def _band_block_mask(seq_len: int, window: int, device: torch.device):
    """FlexAttention's block mask of the causal band 0 <= t - s < window (blocks outside it are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def band(b, h, q_idx, kv_idx):
        lag = q_idx - kv_idx
        return (lag >= 0) & (lag < window)

    return create_block_mask(band, None, None, seq_len, seq_len, device=device)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_window_attention(q, k, v, window: int) -> torch.Tensor:
    """Sliding-window attention through FlexAttention: q (B, H, T, d), k, v (B, H_kv, T, d).

    FlexAttention is compiled on its first call for each shape (uncompiled it materialises every
    score). On a CPU it runs forward only (through Inductor's C++ backend): it has no backward there."""
    mask = _band_block_mask(q.shape[2], window, q.device)
    return _compiled_flex_attention()(q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


@register("sliding_window_attention", kind="sequence")
class SlidingWindowAttention(Attention):
    """Multi-head softmax attention restricted to positions t - window_size < s <= t.

    Local attention as in Longformer (Beltagy et al. 2020) and the sliding-window layers of Based
    (Arora et al. 2024); everything else (GQA, rotary positions, ``impl``) is ``attention``'s.
    Incremental decoding keeps only the last ``window_size`` keys and values.

    ``impl``: ``"auto"`` passes a band mask to ``scaled_dot_product_attention``; ``"flex"`` runs
    FlexAttention, which skips the blocks outside the band (compiled on its first call for each
    shape; no dropout; no backward on a CPU); ``"torch"`` the written-out reference.
    """

    IMPLS = ("auto", "torch", "flex")

    def __init__(self, d_model: int, max_len: int, window_size: int = 64, n_heads: int = 2,
                 n_kv_heads: int | None = None, positions: str = "rotary", rotary_base: float = 10000.0,
                 dropout: float = 0.0, bias: bool = False, impl: str = "auto"):
        super().__init__(d_model, max_len, n_heads=n_heads, n_kv_heads=n_kv_heads, positions=positions,
                         rotary_base=rotary_base, dropout=dropout, bias=bias, impl=impl)
        require_positive(self.layer_name, window_size=window_size)
        require(window_size <= max_len, self.layer_name,
                f"window_size={window_size} is larger than max_len={max_len}")
        require(not (impl == "flex" and dropout), self.layer_name, "impl=flex has no attention dropout")
        self.window_size = window_size

    def _attend(self, q, k, v, dropout_p: float) -> torch.Tensor:
        """Attention to the last ``window_size`` positions: SDPA with a band mask, FlexAttention,
        or the reference."""
        if self.impl == "torch":
            return causal_attention_reference(q, *self._expand_kv(k, v), window=self.window_size, dropout_p=dropout_p)
        if self.impl == "flex":
            return flex_window_attention(q, k, v, self.window_size)
        i = torch.arange(q.shape[2], device=q.device)
        lag = i[:, None] - i[None, :]
        return self._sdpa(q, k, v, dropout_p, attn_mask=(lag >= 0) & (lag < self.window_size))

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {**super().init_state(batch_size, device=device, dtype=dtype), "position": 0}

    def step(self, x: torch.Tensor, state: dict):
        B, D = x.shape
        q, k, v = self.qkv(x[:, None], offset=state["position"])
        start = max(0, state["k"].shape[2] - (self.window_size - 1))
        k_all = torch.cat([state["k"][:, :, start:], k], dim=2)
        v_all = torch.cat([state["v"][:, :, start:], v], dim=2)
        ke, ve = self._expand_kv(k_all, v_all)
        y = F.scaled_dot_product_attention(q, ke, ve)
        new_state = {"k": k_all, "v": v_all, "position": state["position"] + 1}
        return self.out_proj(y.transpose(1, 2).reshape(B, D)), new_state

    def state_size(self, seq_len: int) -> int:
        """The key/value cache: at most window_size positions."""
        return 2 * min(seq_len, self.window_size) * self.n_kv_heads * self.head_dim
