"""DeltaNet: linear attention with the delta rule (Schlag et al. 2021; Yang et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.layers import fla_ops
from seqicl.layers.ops import CausalConv, HeadNorm, chunked_delta_rule, require, require_divisible, require_positive
from seqicl.layers.registry import register


@register("deltanet", kind="sequence")
class DeltaNet(nn.Module):
    """DeltaNet (Schlag et al. 2021, "Linear transformers are secretly fast weight programmers";
    layer of Yang et al. 2024, "Parallelizing linear transformers with the delta rule over
    sequence length"), per head:

        S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}),   o_t = q_t S_t,   beta_t = sigmoid(x_t W_beta)

    q, k, v are linear projections followed (if ``conv_size`` > 0) by a short causal depthwise
    convolution and SiLU; q and k are L2-normalised, so I - beta_t k_t^T k_t has norm <= 1. The output
    of each head goes through RMSNorm, then the output projection. Forward is the chunkwise WY
    form, ``step`` the recurrence.

    ``impl``: ``"auto"`` runs the forward through fla's ``chunk_delta_rule`` where it can (CUDA,
    bf16 or fp16 (under autocast), head size a power of two in [16, 256]), else the chunkwise
    reference; ``"torch"`` always the reference; ``"fla"`` fla or an error.
    """

    def __init__(self, d_model: int, max_len: int, n_heads: int = 2, conv_size: int = 4, chunk_size: int = 64,
                 norm_eps: float = 1e-5, bias: bool = False, impl: str = "auto"):
        super().__init__()
        name = self.layer_name
        fla_ops.check_impl(name, impl)
        require_positive(name, n_heads=n_heads, chunk_size=chunk_size)
        require_divisible(name, ("d_model", d_model), ("n_heads", n_heads))
        require(isinstance(conv_size, int) and conv_size >= 0, name,
                f"conv_size must be an integer >= 0, got {conv_size!r}")
        self.n_heads, self.head_dim, self.chunk_size, self.impl = n_heads, d_model // n_heads, chunk_size, impl
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.conv = CausalConv(3 * d_model, conv_size) if conv_size else None
        self.beta_proj = nn.Linear(d_model, n_heads, bias=bias)
        self.norm = HeadNorm(n_heads, self.head_dim, eps=norm_eps, rms=True)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _heads(self, x: torch.Tensor, qkv: torch.Tensor):
        """x (B, T, D) and its (convolved) projections (B, T, 3D) -> q, k, v (B, H, T, d), beta (B, H, T)."""
        B, T, _ = x.shape
        if self.conv is not None:
            qkv = F.silu(qkv)
        q, k, v = qkv.view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        beta = torch.sigmoid(self.beta_proj(x)).transpose(1, 2)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.norm(o.transpose(1, 2)).flatten(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        if self.conv is not None:
            qkv = self.conv(qkv)
        q, k, v, beta = self._heads(x, qkv)
        if fla_ops.use_fla(self, x, lambda: fla_ops.delta_rule_unsupported(self.head_dim, self.head_dim,
                                                                          fla_ops.work_dtype(q, k, v))):
            return self._output(fla_ops.delta_rule(q, k, v, beta))
        o, _ = chunked_delta_rule(q, k, v, beta, chunk_size=self.chunk_size)
        return self._output(o)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        S = torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype)
        conv = None if self.conv is None else self.conv.init_state(batch_size, device=device, dtype=dtype)
        return {"S": S, "conv": conv}

    def step(self, x: torch.Tensor, state: dict):
        qkv, conv = self.qkv_proj(x), None
        if self.conv is not None:
            qkv, conv = self.conv.step(qkv, state["conv"])
        q, k, v, beta = self._heads(x[:, None], qkv[:, None])
        S = state["S"]
        S = S + beta[..., None] * k.transpose(-1, -2) @ (v - k @ S)
        return self._output(q @ S)[:, 0], {"S": S, "conv": conv}

    def state_size(self, seq_len: int) -> int:
        conv = 0 if self.conv is None else self.conv.state_size(seq_len)
        return self.n_heads * self.head_dim ** 2 + conv
