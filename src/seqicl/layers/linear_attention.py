"""Linear attention with a feature map (Katharopoulos et al. 2020), and the base of its variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.layers import fla_ops
from seqicl.layers.ops import chunked_linear_attention, require, require_divisible, require_positive
from seqicl.layers.registry import register


class FeatureMapAttention(nn.Module):
    """Causal linear attention, normalised, per head (Katharopoulos et al. 2020):

        o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps),  S_t = sum_{s<=t} phi(k_s)^T v_s,  z_t = sum_{s<=t} phi(k_s)

    q and k have ``qk_dim`` channels per head (default d_model / n_heads), v has d_model / n_heads.
    Subclasses set ``n_features`` and define ``feature_map``. ``forward`` is chunked (the
    normaliser z rides along as a column of ones appended to v); ``step`` is the recurrence.

    ``impl`` (``"auto"``, ``"torch"``, ``"fla"``): subclasses with an fla kernel define
    ``fla_unsupported`` and ``fla_attention``, which ``forward`` takes where ``fla_ops.use_fla`` says so.
    """

    n_features: int

    def __init__(self, d_model: int, n_heads: int, qk_dim: int | None, eps: float, chunk_size: int, bias: bool,
                 normalize: bool = True, impl: str = "torch"):
        super().__init__()
        fla_ops.check_impl(self.layer_name, impl)
        require_positive(self.layer_name, n_heads=n_heads, chunk_size=chunk_size)
        require_divisible(self.layer_name, ("d_model", d_model), ("n_heads", n_heads))
        require(eps >= 0, self.layer_name, f"eps must be >= 0, got {eps!r}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qk_dim = self.head_dim if qk_dim is None else qk_dim
        self.eps, self.chunk_size, self.normalize, self.impl = eps, chunk_size, normalize, impl
        self.qk_proj = nn.Linear(d_model, 2 * n_heads * self.qk_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """(..., qk_dim) -> (..., n_features)."""
        raise NotImplementedError

    def fla_unsupported(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
        """Why fla cannot compute this layer's attention on q, k (B, H, T, qk_dim), v (B, H, T, head_dim)."""
        return f"{self.layer_name} has no fla kernel"

    def fla_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The (normalised) attention output (B, H, T, head_dim) of q, k, v (before the feature map) by fla."""
        raise NotImplementedError

    def _project(self, x: torch.Tensor):
        """x (B, T, D) -> q, k (B, H, T, qk_dim) and v (B, H, T, head_dim)."""
        B, T, _ = x.shape
        q, k = self.qk_proj(x).view(B, T, 2, self.n_heads, self.qk_dim).permute(2, 0, 3, 1, 4)
        return q, k, self.v_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def _features_and_values(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Projections -> phi(q), phi(k) (B, H, T, F) and v (B, H, T, head_dim [+ 1 column of ones])."""
        if self.normalize:
            v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
        return self.feature_map(q, is_query=True), self.feature_map(k, is_query=False), v

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, T, head_dim [+ 1]) -> (B, T, D)."""
        if self.normalize:
            o = o[..., :-1] / (o[..., -1:] + self.eps)
        return self._merge_heads(o)

    def _merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, T, head_dim) -> (B, T, D)."""
        B, H, T, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(B, T, H * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x)
        if fla_ops.use_fla(self, x, lambda: self.fla_unsupported(q, k, v)):
            return self._merge_heads(self.fla_attention(q, k, v))
        fq, fk, v = self._features_and_values(q, k, v)
        o, _ = chunked_linear_attention(fq, fk, v, chunk_size=self.chunk_size)
        return self._output(o)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """S and z together: (batch, heads, n_features, head_dim [+ 1])."""
        return torch.zeros(batch_size, self.n_heads, self.n_features, self.head_dim + self.normalize,
                           device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor):
        fq, fk, v = self._features_and_values(*self._project(x[:, None]))
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

    ``impl``: ``"auto"`` runs the attention through fla's ``chunk_linear_attn`` (no decay; the
    normaliser, with eps, by a cumulative sum here) where it can (CUDA, head size a power of two in
    [16, 256], float32 only with TF32 matmuls allowed), else the chunkwise reference; ``"torch"``
    always the reference; ``"fla"`` fla or an error.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 2, feature_map: str = "elu",
                 normalize: bool = True, eps: float = 1e-6, chunk_size: int = 64, bias: bool = False,
                 impl: str = "auto"):
        require(feature_map in ("elu", "identity"), self.layer_name,
                f"feature_map must be elu or identity, got {feature_map!r}")
        super().__init__(d_model, n_heads, qk_dim=None, eps=eps, chunk_size=chunk_size, bias=bias,
                         normalize=normalize, impl=impl)
        self.elu = feature_map == "elu"
        self.n_features = self.head_dim

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        return F.elu(x) + 1 if self.elu else x

    def fla_unsupported(self, q, k, v):
        return fla_ops.linear_attention_unsupported(self.n_features, self.head_dim, fla_ops.work_dtype(q, k, v))

    def fla_attention(self, q, k, v):
        fq, fk = self.feature_map(q, is_query=True), self.feature_map(k, is_query=False)
        return fla_ops.linear_attention(fq, fk, v, self.eps if self.normalize else None)
