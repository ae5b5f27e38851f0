"""A top-k routed mixture of MLP experts (Shazeer et al. 2017, "Outrageously large neural
networks"), with the load-balancing loss of Fedus, Zoph and Shazeer (2022), "Switch transformers"."""

from __future__ import annotations

import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers.mlp import _ACTIVATIONS, MLP
from seqicl.layers.registry import register


@register("moe_mlp", kind="state")
class MoEMLP(nn.Module):
    """y = sum_{e in top_k(x)} p_e(x) MLP_e(x),  p = softmax over the top_k router logits W_r x.

    Every token goes to its ``top_k`` experts (no capacity limit, so no token is dropped).
    The experts run one at a time on the tokens routed to them (gather, compute, scatter).
    After each forward, ``aux_loss`` holds ``aux_loss_weight`` times the load-balancing loss
    n_experts * sum_e f_e P_e (f_e: share of routing slots given to expert e, P_e: its mean
    router probability; 1 when balanced); add it to the training loss to use it.
    """

    def __init__(self, d_model: int, max_len: int, n_experts: int = 4, top_k: int = 2, expand: float = 4.0,
                 activation: str = "gelu", aux_loss_weight: float = 0.01, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if not isinstance(n_experts, int) or n_experts < 1:
            raise ConfigError(f"moe_mlp: n_experts must be a positive integer, got {n_experts!r}")
        if not isinstance(top_k, int) or not 1 <= top_k <= n_experts:
            raise ConfigError(f"moe_mlp: top_k must be an integer in [1, n_experts={n_experts}], got {top_k!r}")
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"moe_mlp: activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if aux_loss_weight < 0:
            raise ConfigError(f"moe_mlp: aux_loss_weight must be >= 0, got {aux_loss_weight}")
        self.n_experts, self.top_k, self.aux_loss_weight = n_experts, top_k, aux_loss_weight
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(d_model, max_len, expand=expand, activation=activation, bias=bias)
                                     for _ in range(n_experts))
        self.drop = nn.Dropout(dropout)
        self.aux_loss: torch.Tensor | None = None

    def route(self, x: torch.Tensor):
        """Router logits (tokens, n_experts), chosen experts and their weights (tokens, top_k)."""
        logits = self.router(x)
        top_logits, chosen = logits.topk(self.top_k, dim=-1)
        return logits, chosen, top_logits.softmax(dim=-1)

    def load_balancing_loss(self, logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        share = torch.bincount(chosen.flatten(), minlength=self.n_experts).to(logits.dtype) / chosen.numel()
        return self.n_experts * (share * logits.softmax(dim=-1).mean(dim=0)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits, chosen, weights = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            contribution = weights[token, slot, None] * expert(flat[token])
            out = out.index_put((token,), contribution.to(out.dtype), accumulate=True)
        self.aux_loss = self.aux_loss_weight * self.load_balancing_loss(logits, chosen)
        return self.drop(out).view_as(x)
