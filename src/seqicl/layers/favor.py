"""Performer's FAVOR+ attention (Choromanski et al. 2021): positive orthogonal random features."""

from __future__ import annotations

import math

import torch

from seqicl.layers.linear_attention import FeatureMapAttention
from seqicl.layers.ops import require, require_positive
from seqicl.layers.registry import register


def orthogonal_gaussian(n_rows: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """(n_rows, dim) random projections, orthogonal within each block of ``dim`` rows, each row's
    length drawn as the norm of a standard Gaussian vector, so rows are marginally N(0, I)."""
    q, _ = torch.linalg.qr(torch.randn(math.ceil(n_rows / dim), dim, dim))
    w = q.transpose(-1, -2).reshape(-1, dim)[:n_rows] * torch.randn(n_rows, dim).norm(dim=1, keepdim=True)
    return w.to(device=device, dtype=dtype)


@register("favor", kind="sequence")
class Favor(FeatureMapAttention):
    """FAVOR+ (Choromanski et al. 2021, "Rethinking attention with Performers"), causal.

    Approximates softmax attention with the positive random features of Lemma 1,
    phi(x) = exp(w_i . x - |x|^2 / 2) / sqrt(m), i = 1..m, on x = q / d^(1/4) and k / d^(1/4), so that
    E[phi(q) . phi(k)] = exp(q . k / sqrt(d)); the w_i are orthogonal random features,
    shared by the heads. Attention is the causal prefix-sum form, computed chunkwise.
    ``n_features`` m defaults (null) to ceil(d ln d) for head dimension d, the paper's Theta(d log d).

    The features are a buffer, redrawn by ``redraw_features()``; in training mode every
    ``redraw_interval`` forward calls (0: never). In eval mode they stay fixed.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 2, n_features: int | None = None,
                 redraw_interval: int = 1000, eps: float = 1e-6, chunk_size: int = 64, bias: bool = False):
        super().__init__(d_model, n_heads, qk_dim=None, eps=eps, chunk_size=chunk_size, bias=bias)
        d = self.head_dim
        n_features = max(1, math.ceil(d * math.log(d))) if n_features is None else n_features
        require_positive(self.layer_name, n_features=n_features)
        require(isinstance(redraw_interval, int) and redraw_interval >= 0, self.layer_name,
                f"redraw_interval must be an integer >= 0, got {redraw_interval!r}")
        self.n_features, self.redraw_interval = n_features, redraw_interval
        self.register_buffer("projection", orthogonal_gaussian(n_features, d))
        self.calls_since_redraw = 0

    def redraw_features(self) -> None:
        """Draw fresh random features (from torch's global generator)."""
        self.projection.copy_(orthogonal_gaussian(*self.projection.shape, device=self.projection.device,
                                                  dtype=self.projection.dtype))
        self.calls_since_redraw = 0

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        x = x * self.head_dim ** -0.25
        logits = x @ self.projection.T - (x * x).sum(-1, keepdim=True) / 2
        if is_query:
            # A positive factor per query cancels between numerator and denominator; this one keeps
            # the largest feature at 1. Keys need no shift: w.x - |x|^2/2 <= |w|^2/2 bounds them.
            logits = logits - logits.amax(dim=-1, keepdim=True).detach()
        return logits.exp() / math.sqrt(self.n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.redraw_interval:
            if self.calls_since_redraw == self.redraw_interval:
                self.redraw_features()
            self.calls_since_redraw += 1
        return super().forward(x)
