"""The read-in/read-out backbone for continuous prompts (Garg et al. 2022).

A prompt of ``points`` pairs ``(x_i, y_i)`` becomes a sequence of ``2 * points`` vectors of
size ``n_dims``: ``x_1, (y_1, 0, ..., 0), x_2, (y_2, 0, ..., 0), ...``. A linear read-in maps
them to ``d_model``, the block stack the token model uses (``seqicl.models.stack``: learned
absolute positions when ``positions: learned``, pre-norm blocks) mixes them, and a linear
read-out maps the final normalised state at every ``x`` position to a scalar: the prediction of
that point's ``y`` (a regression value or a logit). Causal sequence mixers make the prediction
for ``x_k`` depend only on the earlier pairs and ``x_k`` itself.
"""

from __future__ import annotations

import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.models import register_backbone
from seqicl.models.stack import BlockStack, init_embeddings


class ContinuousModel(BlockStack):
    """Linear read-in -> block stack -> norm -> linear read-out to one scalar per ``x``.

    ``stack`` are ``BlockStack``'s settings (``n_layers``, ``mixer``, ``state_mixer``,
    ``blocks``, ``positions``, ``embed_dropout``, ``norm_eps``); ``tie_embeddings`` must be false.
    """

    def __init__(self, n_dims: int, max_len: int, d_model: int = 64, tie_embeddings: bool = False, **stack):
        if tie_embeddings:
            raise ConfigError("model.tie_embeddings must be false for continuous tasks: the read-in "
                              "and read-out have different shapes")
        super().__init__({"read_in": nn.Linear(n_dims, d_model)}, d_model, max_len, **stack)
        self.n_dims, self.max_len = n_dims, max_len
        for i, block in enumerate(self.blocks):
            if getattr(block.mixer, "needs_tokens", False):
                raise ConfigError(f"block {i}: layer {block.mixer.layer_name!r} reads token ids, which "
                                  "continuous prompts do not have")
        self.read_out = nn.Linear(d_model, 1)
        init_embeddings(self.pos_embed)

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
        h = self.run_stack(self.read_in(z))
        return self.read_out(self.norm(h[:, 0::2]))[..., 0]


@register_backbone("continuous")
def _continuous(task, **cfg) -> nn.Module:
    if task.kind != "continuous":
        raise ConfigError(f"task {task.name!r} is not a continuous task; model.backbone=continuous cannot serve it")
    return ContinuousModel(n_dims=task.n_dims, max_len=task.seq_len, **cfg)
