"""The token language-model backbone: token embedding, the block stack, norm, vocabulary head.

The blocks, positions, dropout and final norm are the shared ``BlockStack``
(``seqicl.models.stack``); this module adds the token embedding before them and the head
after them, and the parameter utilities every backbone uses.
"""

from __future__ import annotations

import torch
from torch import nn

from seqicl.models.stack import BlockStack, init_embeddings


class TokenLM(BlockStack):
    """Token embedding (+ optional learned absolute positions) -> blocks -> norm -> vocabulary head.

    ``stack`` are ``BlockStack``'s settings: ``n_layers``, ``mixer``, ``state_mixer``, ``blocks``,
    ``positions``, ``embed_dropout``, ``norm_eps``. ``tie_embeddings`` shares the head's weight
    with the token embedding.
    """

    def __init__(self, vocab_size: int, max_len: int, d_model: int = 64, tie_embeddings: bool = False, **stack):
        super().__init__({"embed": nn.Embedding(vocab_size, d_model)}, d_model, max_len, **stack)
        self.vocab_size, self.max_len = vocab_size, max_len
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        init_embeddings(self.embed, self.pos_embed)
        if not tie_embeddings:
            nn.init.normal_(self.head.weight, std=0.02)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states (batch, seq, d_model)."""
        T = tokens.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence of length {T} is longer than the model's max_len={self.max_len}")
        return self.norm(self.run_stack(self.embed(tokens), tokens))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, seq, vocab)."""
        return self.head(self.hidden(tokens))

    # Incremental decoding: one token per call. Stepping through a sequence gives the logits
    # ``forward`` gives at every position.
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """The state before the first token: the position and every block's mixer state
        (on the embedding's device and in its dtype unless given)."""
        if device is None or dtype is None:
            weight = self.embed.weight
            device, dtype = device or weight.device, dtype or weight.dtype
        return self.init_stack_state(batch_size, device, dtype)

    def step(self, token: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Read ``token`` (batch,) at the state's position -> (logits (batch, vocab), new state)."""
        if state["position"] >= self.max_len:
            raise ValueError(f"cannot step past the model's max_len={self.max_len}")
        x, state = self.step_stack(self.embed(token), state, token)
        return self.head(self.norm(x)), state


def weight_decay_split(model: nn.Module, decay_vectors: bool = False) -> tuple[list, list]:
    """Trainable parameters (each once) that take weight decay, and those that do not.

    Matrices and embeddings decay; parameters a layer marks with ``_no_weight_decay = True`` (the
    dynamics of state space models) do not; vectors (biases, norms, skip weights) decay only with
    ``decay_vectors`` (as in safari's optimiser, which seq_icl trains with).
    """
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        exempt = getattr(p, "_no_weight_decay", False) or (p.dim() < 2 and not decay_vectors)
        (no_decay if exempt else decay).append(p)
    return decay, no_decay


def count_parameters(model: nn.Module) -> int:
    """The number of parameter elements, a tied weight counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
