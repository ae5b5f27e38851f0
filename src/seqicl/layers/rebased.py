"""ReBased: linear attention with a learnable quadratic kernel (Aksenov et al. 2024)."""

from __future__ import annotations

import torch
from torch import nn

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
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 1, feature_dim: int = 16, eps: float = 1e-6,
                 chunk_size: int = 64, bias: bool = False):
        require_positive(self.layer_name, feature_dim=feature_dim)
        super().__init__(d_model, n_heads, qk_dim=feature_dim, eps=eps, chunk_size=chunk_size, bias=bias)
        self.n_features = feature_dim ** 2
        self.q_norm, self.k_norm = nn.LayerNorm(feature_dim), nn.LayerNorm(feature_dim)

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        x = self.q_norm(x) if is_query else self.k_norm(x)
        return (x[..., :, None] * x[..., None, :]).flatten(-2)
