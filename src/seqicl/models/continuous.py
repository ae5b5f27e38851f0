"""The read-in/read-out backbone for continuous prompts (Garg et al. 2022).

A prompt of ``points`` pairs ``(x_i, y_i)`` becomes a sequence of ``2 * points`` vectors of
size ``n_dims``: ``x_1, (y_1, 0, ..., 0), x_2, (y_2, 0, ..., 0), ...``. A linear read-in maps
them to ``d_model`` (plus learned absolute positions when ``positions: learned``), the same
pre-norm blocks as the token model mix them, and a linear read-out maps the final normalised
state at every ``x`` position to a scalar: the prediction of that point's ``y`` (a regression
value or a logit). Causal sequence mixers make the prediction for ``x_k`` depend only on the
earlier pairs and ``x_k`` itself.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.models import register_backbone
from seqicl.models.stack import Block, expand_blocks


class ContinuousModel(nn.Module):
    def __init__(self, n_dims: int, max_len: int, d_model: int = 64, n_layers: int | None = 2,
                 mixer="attention", state_mixer="mlp", blocks: Sequence | None = None,
                 positions: str = "none", tie_embeddings: bool = False, embed_dropout: float = 0.0,
                 norm_eps: float = 1e-5):
        super().__init__()
        if positions not in ("learned", "none"):
            raise ConfigError(f"model.positions must be learned or none, got {positions!r}")
        if tie_embeddings:
            raise ConfigError("model.tie_embeddings must be false for continuous tasks: the read-in "
                              "and read-out have different shapes")
        self.n_dims, self.max_len, self.d_model = n_dims, max_len, d_model
        self.read_in = nn.Linear(n_dims, d_model)
        self.pos_embed = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(embed_dropout)
        self.block_specs = expand_blocks(n_layers, mixer, state_mixer, blocks)
        self.blocks = nn.ModuleList(Block(d_model, max_len, b["mixer"], b["state_mixer"], norm_eps)
                                    for b in self.block_specs)
        for i, block in enumerate(self.blocks):
            if getattr(block.mixer, "needs_tokens", False):
                raise ConfigError(f"block {i}: layer {block.mixer.layer_name!r} reads token ids, which "
                                  "continuous prompts do not have")
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.read_out = nn.Linear(d_model, 1)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=0.02)

    def interleave(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(n, points, n_dims), (n, points) -> (n, 2 * points, n_dims): x_1, y_1, x_2, y_2, ..."""
        n, P, D = xs.shape
        y_vec = torch.zeros_like(xs)
        y_vec[..., 0] = ys
        return torch.stack([xs, y_vec], dim=2).reshape(n, 2 * P, D)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predictions (n, points): entry k is read at x_k, after the pairs before it."""
        if xs.shape[-1] != self.n_dims:
            raise ValueError(f"inputs have {xs.shape[-1]} dimensions, the model reads {self.n_dims}")
        z = self.interleave(xs, ys.to(xs.dtype))
        T = z.shape[1]
        if T > self.max_len:
            raise ValueError(f"a prompt of {T // 2} points is longer than the model's max_len={self.max_len}")
        h = self.read_in(z)
        if self.pos_embed is not None:
            h = h + self.pos_embed.weight[:T]
        h = self.drop(h)
        for block in self.blocks:
            h = block(h)
        return self.read_out(self.norm(h[:, 0::2]))[..., 0]


@register_backbone("continuous")
def _continuous(task, **cfg) -> nn.Module:
    if task.kind != "continuous":
        raise ConfigError(f"task {task.name!r} is not a continuous task; model.backbone=continuous cannot serve it")
    return ContinuousModel(n_dims=task.n_dims, max_len=task.seq_len, **cfg)
