"""Based's Taylor linear attention (Arora et al. 2024)."""

from __future__ import annotations

import math

import torch

from seqicl.layers import fla_ops
from seqicl.layers.linear_attention import FeatureMapAttention
from seqicl.layers.ops import require_positive
from seqicl.layers.registry import register


@register("based", kind="sequence")
class Based(FeatureMapAttention):
    """The linear attention of Based (Arora et al. 2024, "Simple linear attention language models
    balance the recall-throughput tradeoff").

    q and k are projected to ``feature_dim`` channels per head; the feature map is the 2nd-order
    Taylor expansion of exp(q . k / sqrt(d)), d = feature_dim:

        phi(x) = [1, x / d^(1/4), (x outer x) / sqrt(2 d)],   phi(q) . phi(k) = 1 + s + s^2 / 2,  s = q . k / sqrt(d)

    (1 + d + d^2 features), in normalised causal linear attention; v keeps d_model / n_heads
    channels per head. The short convolutions and sliding-window attention of the Based
    architecture are the separate layers ``base_conv`` and ``sliding_window_attention``
    (configs/model/based.yaml combines them).

    ``impl``: ``"auto"`` computes the attention with fla's parallel Based kernel (the scores
    1 + s + s^2/2 from q and k directly, without the 1 + d + d^2 features) where it can (CUDA,
    feature_dim a power of two in [16, 128], head size a power of two in [16, 256]), else the
    chunkwise reference; ``"torch"`` always the reference; ``"fla"`` fla or an error.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 1, feature_dim: int = 16, eps: float = 1e-6,
                 chunk_size: int = 64, bias: bool = False, impl: str = "auto"):
        require_positive(self.layer_name, feature_dim=feature_dim)
        super().__init__(d_model, n_heads, qk_dim=feature_dim, eps=eps, chunk_size=chunk_size, bias=bias, impl=impl)
        self.n_features = 1 + feature_dim + feature_dim ** 2

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        d = x.shape[-1]
        second = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2 * d)
        return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, second], dim=-1)

    def fla_unsupported(self, q, k, v):
        return fla_ops.based_unsupported(self.qk_dim, self.head_dim, fla_ops.work_dtype(q, k, v))

    def fla_attention(self, q, k, v):
        return fla_ops.based(q, k, v, self.eps)
