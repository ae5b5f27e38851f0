"""The token language-model backbone: embedding, pre-norm residual blocks, norm, head.

A model is ``d_model`` and a list of blocks; each block is a sequence mixer and a state mixer,
each applied as ``x + mixer(norm(x))``. Layers are given by specs: a registered ``name`` plus
its hyper-parameters (``{"name": "attention", "n_heads": 4}``), or the import path of any layer
class (``{"_target_": "mypkg.mixers.MyMixer", "my_kwarg": 3}``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from seqicl import layers
from seqicl.errors import ConfigError


def build_layer(spec, d_model: int, max_len: int, expected_kind: str) -> nn.Module | None:
    """A layer from its spec (a name, or a mapping with ``name`` or ``_target_``);
    ``None``/``identity`` -> no layer."""
    return layers.build_spec(spec, d_model, max_len, expected_kind)


class Block(nn.Module):
    def __init__(self, d_model: int, max_len: int, mixer, state_mixer, norm_eps: float = 1e-5):
        super().__init__()
        self.mixer = build_layer(mixer, d_model, max_len, "sequence")
        self.state_mixer = build_layer(state_mixer, d_model, max_len, "state")
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps) if self.mixer is not None else None
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps) if self.state_mixer is not None else None

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        if self.mixer is not None:
            h = self.norm1(x)
            x = x + (self.mixer(h, tokens=tokens) if getattr(self.mixer, "needs_tokens", False)
                     else self.mixer(h))
        if self.state_mixer is not None:
            x = x + self.state_mixer(self.norm2(x))
        return x

    def init_state(self, batch_size: int, device=None, dtype=None):
        """The sequence mixer's state before the first token (``None`` without a mixer)."""
        if self.mixer is None:
            return None
        if not hasattr(self.mixer, "step"):
            raise ConfigError(f"layer {self.mixer.layer_name!r} has no incremental decoding (init_state/step)")
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state, token: torch.Tensor):
        """One position ``x`` (batch, d_model) of token ``token`` (batch,) -> (output, new state)."""
        if self.mixer is not None:
            h = self.norm1(x)
            y, state = (self.mixer.step(h, state, token=token) if getattr(self.mixer, "needs_tokens", False)
                        else self.mixer.step(h, state))
            x = x + y
        if self.state_mixer is not None:
            x = x + self.state_mixer(self.norm2(x)[:, None])[:, 0]
        return x, state


def expand_blocks(n_layers: int | None, mixer, state_mixer, blocks: Sequence | None) -> list[dict]:
    """The block list: explicit ``blocks``, or ``n_layers`` copies of (mixer, state_mixer)."""
    if blocks:
        out = []
        for i, b in enumerate(blocks):
            b = dict(b)
            unknown = set(b) - {"mixer", "state_mixer"}
            if unknown:
                raise ConfigError(f"block {i} has unknown key {sorted(unknown)[0]!r}; a block has mixer and state_mixer")
            out.append({"mixer": b.get("mixer"), "state_mixer": b.get("state_mixer")})
        return out
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ConfigError(f"model.n_layers must be a positive integer, got {n_layers!r}")
    return [{"mixer": mixer, "state_mixer": state_mixer} for _ in range(n_layers)]


class TokenLM(nn.Module):
    """Token embedding (+ optional learned absolute positions) -> blocks -> norm -> vocabulary head."""

    def __init__(self, vocab_size: int, max_len: int, d_model: int = 64, n_layers: int | None = 2,
                 mixer="attention", state_mixer="mlp", blocks: Sequence | None = None,
                 positions: str = "none", tie_embeddings: bool = False, embed_dropout: float = 0.0,
                 norm_eps: float = 1e-5):
        super().__init__()
        if positions not in ("learned", "none"):
            raise ConfigError(f"model.positions must be learned or none, got {positions!r}")
        self.vocab_size, self.max_len, self.d_model = vocab_size, max_len, d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(embed_dropout)
        self.block_specs = expand_blocks(n_layers, mixer, state_mixer, blocks)
        self.blocks = nn.ModuleList(Block(d_model, max_len, b["mixer"], b["state_mixer"], norm_eps)
                                    for b in self.block_specs)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        for emb in (self.embed, self.pos_embed):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        if not tie_embeddings:
            nn.init.normal_(self.head.weight, std=0.02)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states (batch, seq, d_model)."""
        T = tokens.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence of length {T} is longer than the model's max_len={self.max_len}")
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[:T]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, tokens)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, seq, vocab)."""
        return self.head(self.hidden(tokens))

    # Incremental decoding: one token per call, each block carrying its sequence mixer's state.
    # Stepping through a sequence gives the logits ``forward`` gives at every position.
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """The state before the first token: the position and every block's mixer state."""
        if device is None or dtype is None:
            weight = self.embed.weight
            device, dtype = device or weight.device, dtype or weight.dtype
        return {"position": 0, "blocks": [block.init_state(batch_size, device=device, dtype=dtype)
                                          for block in self.blocks]}

    def step(self, token: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Read ``token`` (batch,) at the state's position -> (logits (batch, vocab), new state)."""
        t = state["position"]
        if t >= self.max_len:
            raise ValueError(f"cannot step past the model's max_len={self.max_len}")
        x = self.embed(token)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[t]
        x = self.drop(x)
        blocks = []
        for block, block_state in zip(self.blocks, state["blocks"]):
            x, block_state = block.step(x, block_state, token)
            blocks.append(block_state)
        return self.head(self.norm(x)), {"position": t + 1, "blocks": blocks}


def weight_decay_split(model: nn.Module) -> tuple[list, list]:
    """Trainable parameters (each once) that take weight decay, and those that do not.

    Matrices and embeddings decay; vectors (biases, norms) and parameters a layer marks with
    ``_no_weight_decay = True`` (the dynamics of state space models) do not.
    """
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return decay, no_decay


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
