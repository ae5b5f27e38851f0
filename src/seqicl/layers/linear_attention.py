"""Linear attention with a feature map (Katharopoulos et al. 2020), and the base of its variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.layers.ops import chunked_linear_attention, require, require_divisible, require_positive
from seqicl.layers.registry import register


class FeatureMapAttention(nn.Module):
    """Causal linear attention, normalised, per head (Katharopoulos et al. 2020):

        o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps),  S_t = sum_{s<=t} phi(k_s)^T v_s,  z_t = sum_{s<=t} phi(k_s)

    q and k have ``qk_dim`` channels per head (default d_model / n_heads), v has d_model / n_heads.
    Subclasses set ``n_features`` and define ``feature_map``. ``forward`` is chunked (the
    normaliser z rides along as a column of ones appended to v); ``step`` is the recurrence.
    """

    n_features: int

    def __init__(self, d_model: int, n_heads: int, qk_dim: int | None, eps: float, chunk_size: int, bias: bool,
                 normalize: bool = True):
        super().__init__()
        require_positive(self.layer_name, n_heads=n_heads, chunk_size=chunk_size)
        require_divisible(self.layer_name, ("d_model", d_model), ("n_heads", n_heads))
        require(eps >= 0, self.layer_name, f"eps must be >= 0, got {eps!r}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qk_dim = self.head_dim if qk_dim is None else qk_dim
        self.eps, self.chunk_size, self.normalize = eps, chunk_size, normalize
        self.qk_proj = nn.Linear(d_model, 2 * n_heads * self.qk_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """(..., qk_dim) -> (..., n_features)."""
        raise NotImplementedError

    def _features_and_values(self, x: torch.Tensor):
        """x (B, T, D) -> phi(q), phi(k) (B, H, T, F) and v (B, H, T, head_dim [+ 1 column of ones])."""
        B, T, _ = x.shape
        q, k = self.qk_proj(x).view(B, T, 2, self.n_heads, self.qk_dim).permute(2, 0, 3, 1, 4)
        v = self.v_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        if self.normalize:
            v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
        return self.feature_map(q, is_query=True), self.feature_map(k, is_query=False), v

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, T, head_dim [+ 1]) -> (B, T, D)."""
        if self.normalize:
            o = o[..., :-1] / (o[..., -1:] + self.eps)
        B, H, T, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, T, H * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fq, fk, v = self._features_and_values(x)
        o, _ = chunked_linear_attention(fq, fk, v, chunk_size=self.chunk_size)
        return self._output(o)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """S and z together: (batch, heads, n_features, head_dim [+ 1])."""
        return torch.zeros(batch_size, self.n_heads, self.n_features, self.head_dim + self.normalize,
                           device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor):
        fq, fk, v = self._features_and_values(x[:, None])
        state = state + fk.transpose(-1, -2) @ v
        return self._output(fq @ state)[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.n_features * (self.head_dim + self.normalize)


@register("linear_attention", kind="sequence")
class LinearAttention(FeatureMapAttention):
    """Linear attention of "Transformers are RNNs" (Katharopoulos et al. 2020), causal.

    ``feature_map``: ``"elu"`` phi(x) = elu(x) + 1 (the paper's) or ``"identity"``.
    With ``normalize`` the output is divided by phi(q_t) . sum_{s<=t} phi(k_s) + eps; with the
    identity map that denominator has no sign, so ``normalize=False`` is the usual choice there.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 2, feature_map: str = "elu",
                 normalize: bool = True, eps: float = 1e-6, chunk_size: int = 64, bias: bool = False):
        require(feature_map in ("elu", "identity"), self.layer_name,
                f"feature_map must be elu or identity, got {feature_map!r}")
        super().__init__(d_model, n_heads, qk_dim=None, eps=eps, chunk_size=chunk_size, bias=bias,
                         normalize=normalize)
        self.elu = feature_map == "elu"
        self.n_features = self.head_dim

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        return F.elu(x) + 1 if self.elu else x
