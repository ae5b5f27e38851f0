"""The block stack every backbone shares: positions, embedding dropout, pre-norm residual blocks, norm.

A model is ``d_model`` and a list of blocks; each block is a sequence mixer and a state mixer,
each applied as ``x + mixer(norm(x))``. Layers are given by specs: a registered ``name`` plus
its hyper-parameters (``{"name": "attention", "n_heads": 4}``), or the import path of any layer
class (``{"_target_": "mypkg.mixers.MyMixer", "my_kwarg": 3}``).

``BlockStack`` is the base class of the backbones (``TokenLM``, ``ContinuousModel``,
``AutoEncoder``): each adds its own read-in before the stack and read-out after it. Its
layers are attributes of the backbone itself (``pos_embed``, ``drop``, ``blocks``, ``norm``),
so state dicts name them as they always have.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from seqicl import layers
from seqicl.errors import ConfigError


def build_layer(spec, d_model: int, max_len: int, expected_kind: str) -> nn.Module | None:
    """A layer from its spec (a name, or a mapping with ``name`` or ``_target_``);
    ``None``/``identity`` -> no layer."""
    return layers.build_spec(spec, d_model, max_len, expected_kind)


class Block(nn.Module):
    """A sequence mixer and a state mixer (either may be absent), each as ``x + layer(norm(x))``."""

    def __init__(self, d_model: int, max_len: int, mixer, state_mixer, norm_eps: float = 1e-5):
        super().__init__()
        self.mixer = build_layer(mixer, d_model, max_len, "sequence")
        self.state_mixer = build_layer(state_mixer, d_model, max_len, "state")
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps) if self.mixer is not None else None
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps) if self.state_mixer is not None else None

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (batch, seq, d_model) -> the same after both residual layers; ``tokens``
        (batch, seq) go to a token-aware sequence mixer."""
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

    def step(self, x: torch.Tensor, state, token: torch.Tensor | None):
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


def init_embeddings(*embeddings: nn.Embedding | None) -> None:
    """Re-draw each given embedding's weight from N(0, 0.02), in order (``None`` skipped)."""
    for emb in embeddings:
        if emb is not None:
            nn.init.normal_(emb.weight, std=0.02)


class BlockStack(nn.Module):
    """Learned absolute positions (``positions: learned``) or none, dropout on the embeddings,
    the blocks, and the final norm, over hidden states of width ``d_model``.

    ``inputs`` are the backbone's read-in layers by attribute name (an embedding, a read-in
    projection, a learned token). They are built before the stack and registered ahead of it, so
    that the random draws and the parameter order (by which a checkpoint's optimizer state is
    stored) are those of a backbone that builds its read-in first. ``max_len`` is the longest
    sequence the stack reads: the positions' length and every layer's ``max_len``.

    The final norm ``norm`` is built here and applied by the backbone's read-out, to the
    positions it reads. The backbone draws ``pos_embed`` from N(0, 0.02) (``init_embeddings``)
    once its own layers are built, in the order of its other initialisations.
    """

    def __init__(self, inputs: Mapping[str, nn.Module | nn.Parameter], d_model: int, max_len: int,
                 n_layers: int | None = 2, mixer="attention", state_mixer="mlp", blocks: Sequence | None = None,
                 positions: str = "none", embed_dropout: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        if positions not in ("learned", "none"):
            raise ConfigError(f"model.positions must be learned or none, got {positions!r}")
        for name, layer in inputs.items():
            setattr(self, name, layer)
        self.d_model = d_model
        self.pos_embed = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(embed_dropout)
        self.block_specs = expand_blocks(n_layers, mixer, state_mixer, blocks)
        self.blocks = nn.ModuleList(Block(d_model, max_len, b["mixer"], b["state_mixer"], norm_eps)
                                    for b in self.block_specs)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)

    def run_stack(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded inputs (batch, seq, d_model) -> hidden states before the final norm.

        Adds the positions of the first ``seq`` places, applies the dropout and the blocks;
        ``tokens`` (batch, seq) are the ids token-aware mixers read."""
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[:x.shape[1]]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, tokens)
        return x

    # Incremental decoding: one position per call, each block carrying its sequence mixer's state.
    # Stepping through a sequence gives the hidden states ``run_stack`` gives at every position.
    def init_stack_state(self, batch_size: int, device, dtype) -> dict:
        """The state before the first position: the position and every block's mixer state."""
        return {"position": 0, "blocks": [block.init_state(batch_size, device=device, dtype=dtype)
                                          for block in self.blocks]}

    def step_stack(self, x: torch.Tensor, state: dict, token: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The embedded input (batch, d_model) at the state's position, of token ``token`` (batch,)
        -> (hidden state before the final norm, new state)."""
        t = state["position"]
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[t]
        x = self.drop(x)
        blocks = []
        for block, block_state in zip(self.blocks, state["blocks"]):
            x, block_state = block.step(x, block_state, token)
            blocks.append(block_state)
        return x, {"position": t + 1, "blocks": blocks}
