"""The auto-encoder backbone of MAD's compression task (Poli et al. 2024).

Encoder: the block stack (``seqicl.models.stack``) reads the token embeddings followed by one
learned aggregation token; the aggregation token comes last, so with causal sequence mixers it
is the one position that sees the whole sequence, and its final (normalised) hidden state is
the code. Decoder: for every position ``t``, the code plus a learned embedding of ``t`` goes
through a pre-norm residual MLP, a norm and the vocabulary head. The decoder sees nothing but
the code and the position, so everything it recovers passed through the aggregation token.

``hidden(tokens)`` returns the decoded states (batch, seq, d_model) and ``head`` maps them to
logits, the interface the ``cross_entropy`` objective uses for any token backbone.
"""

from __future__ import annotations

import torch
from torch import nn

from seqicl import layers
from seqicl.errors import ConfigError
from seqicl.models import register_backbone
from seqicl.models.stack import BlockStack, init_embeddings


class AutoEncoder(BlockStack):
    """Blocks over ``tokens + [aggregation]`` -> one code vector -> MLP decoder at every position.

    ``stack`` are ``BlockStack``'s settings (``n_layers``, ``mixer``, ``state_mixer``,
    ``blocks``, ``positions``, ``embed_dropout``, ``norm_eps``); the stack reads ``seq_len + 1``
    positions. ``tie_embeddings`` shares the head's weight with the token embedding.
    """

    def __init__(self, vocab_size: int, seq_len: int, d_model: int = 64, tie_embeddings: bool = False,
                 norm_eps: float = 1e-5, **stack):
        inputs = {"embed": nn.Embedding(vocab_size, d_model), "aggregate": nn.Parameter(torch.randn(d_model) * 0.02)}
        super().__init__(inputs, d_model, seq_len + 1, norm_eps=norm_eps, **stack)
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.decoder_pos = nn.Embedding(seq_len, d_model)
        self.decoder_norm_in = nn.LayerNorm(d_model, eps=norm_eps)
        self.decoder = layers.build("mlp", d_model=d_model, max_len=seq_len)
        self.decoder_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        init_embeddings(self.embed, self.pos_embed, self.decoder_pos)
        if not tie_embeddings:
            nn.init.normal_(self.head.weight, std=0.02)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The code: the aggregation token's final hidden state (batch, d_model)."""
        B, T = tokens.shape
        if T > self.seq_len:
            raise ValueError(f"sequence of length {T} is longer than the auto-encoder's seq_len={self.seq_len}")
        x = torch.cat([self.embed(tokens), self.aggregate.expand(B, 1, -1)], dim=1)
        token_ids = torch.cat([tokens, tokens.new_zeros(B, 1)], dim=1)  # token-aware mixers see id 0 there
        return self.norm(self.run_stack(x, token_ids)[:, -1])

    def decode(self, code: torch.Tensor, length: int) -> torch.Tensor:
        """Decoded hidden states (batch, length, d_model) from the code alone."""
        h = code[:, None, :] + self.decoder_pos.weight[:length]
        h = h + self.decoder(self.decoder_norm_in(h))
        return self.decoder_norm(h)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """The decoded states (batch, seq, d_model) of ``tokens``, read from their code."""
        return self.decode(self.encode(tokens), tokens.shape[1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, seq, vocab): every input token decoded from the code."""
        return self.head(self.hidden(tokens))


@register_backbone("autoencoder")
def _autoencoder(task, **cfg) -> nn.Module:
    if task.kind != "token":
        raise ConfigError(f"task {task.name!r} is not a token task; model.backbone=autoencoder cannot serve it")
    return AutoEncoder(vocab_size=task.vocab_size, seq_len=task.seq_len, **cfg)
