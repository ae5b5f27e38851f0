"""ReBased: linear attention with a learnable quadratic kernel (Aksenov et al. 2024)."""

from __future__ import annotations

import torch
from torch import nn

from seqicl.layers import fla_ops
from seqicl.layers.linear_attention import FeatureMapAttention
from seqicl.layers.ops import require_positive
from seqicl.layers.registry import register


@register("rebased", kind="sequence")
class ReBased(FeatureMapAttention):
    """ReBased (Aksenov et al. 2024, "Linear transformers with learnable kernel functions are better
    in-context models").

    Based's Taylor kernel 1 + s + s^2/2 cannot go below 1/2. ReBased normalises q and k (each by
    its own LayerNorm with learnable gamma and beta) and uses the squared kernel
    phi(x) = x outer x, so that phi(q) . phi(k) = (LN(q) . LN(k))^2 can reach 0; the features
    (feature_dim^2 of them) go into normalised causal linear attention.

    ``impl``: ``"auto"`` computes the attention with fla's parallel ReBased kernel (the scores
    (LN(q) . LN(k))^2 directly, without the d^2 features) where it can (CUDA, feature_dim a power
    of two in [16, 128], head size a power of two in [16, 256]), else the chunkwise reference;
    ``"torch"`` always the reference; ``"fla"`` fla or an error.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 1, feature_dim: int = 16, eps: float = 1e-6,
                 chunk_size: int = 64, bias: bool = False, impl: str = "auto"):
        require_positive(self.layer_name, feature_dim=feature_dim)
        super().__init__(d_model, n_heads, qk_dim=feature_dim, eps=eps, chunk_size=chunk_size, bias=bias, impl=impl)
        self.n_features = feature_dim ** 2
        self.q_norm, self.k_norm = nn.LayerNorm(feature_dim), nn.LayerNorm(feature_dim)

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        x = self.q_norm(x) if is_query else self.k_norm(x)
        return (x[..., :, None] * x[..., None, :]).flatten(-2)

    def fla_unsupported(self, q, k, v):
        return fla_ops.based_unsupported(self.qk_dim, self.head_dim, fla_ops.work_dtype(q, k, v))

    def fla_attention(self, q, k, v):
        return fla_ops.rebased(self.q_norm(q), self.k_norm(k), v, self.eps)
