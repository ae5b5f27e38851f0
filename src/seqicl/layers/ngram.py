"""The hard-wired n-gram head of Akyürek, Wang, Kim and Andreas (2024), "In-context language
learning: architectures and algorithms" (Sec. 7)."""

from __future__ import annotations

import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers.registry import register


def ngram_matches(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """M[b, t, i] = (i < t and tokens[i-n+1..i] == tokens[t-n+1..t]), both n-grams complete."""
    T = tokens.shape[1]
    equal = tokens[:, :, None] == tokens[:, None, :]
    match = equal.clone()
    for k in range(1, n):
        match[:, k:, k:] &= equal[:, :-k, :-k]
    match[:, : n - 1] = False
    match[:, :, : n - 1] = False
    return match & torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(-1)


def ngram_attention(tokens: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The head's attention A (batch, T, T): uniform over the positions j = i + 1 that follow
    an earlier occurrence i of the current n-gram (so j <= t), a zero row if there is none."""
    match = ngram_matches(tokens, n)
    follow = torch.zeros_like(match)
    follow[:, :, 1:] = match[:, :, :-1]
    follow = follow.to(dtype)
    return follow / follow.sum(-1, keepdim=True).clamp(min=1)


@register("ngram", kind="sequence")
class NGram(nn.Module):
    """An n-gram head: at position t, the average of W_v x_j over the positions j that followed
    an earlier occurrence of the n tokens ending at t (zero when the n-gram is new):

        y_t = W_o sum_j A_tj W_v x_j  (+ W_s x_t when ``skip``, the paper's n-gram layer).

    The attention pattern depends on the token ids only (``needs_tokens``) and has no
    parameters. ``n = 1`` is an induction head; the paper hard-wires heads of n = 1, 2, 3
    (stack layers for several orders).
    """

    needs_tokens = True

    def __init__(self, d_model: int, max_len: int, n: int = 1, skip: bool = True, bias: bool = True):
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"ngram: n must be a positive integer, got {n!r}")
        self.d_model, self.n = d_model, n
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.skip = nn.Linear(d_model, d_model, bias=False) if skip else None

    def _output(self, heads: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.out_proj(heads)
        return y if self.skip is None else y + self.skip(x)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        if tokens is None:
            raise ValueError("ngram: forward needs the token ids (tokens=...)")
        attn = ngram_attention(tokens, self.n, x.dtype)
        return self._output(attn @ self.v_proj(x), x)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """Every token so far and its projected value."""
        return {"tokens": torch.zeros(batch_size, 0, dtype=torch.long, device=device),
                "v": torch.zeros(batch_size, 0, self.d_model, device=device, dtype=dtype)}

    def step(self, x: torch.Tensor, state: dict, token: torch.Tensor):
        tokens = torch.cat([state["tokens"], token[:, None]], dim=1)
        v = torch.cat([state["v"], self.v_proj(x)[:, None]], dim=1)
        t = tokens.shape[1] - 1
        match = torch.zeros(tokens.shape, dtype=torch.bool, device=x.device)          # over i = 0..t
        if t >= self.n - 1:
            match[:, self.n - 1:t] = True
            for k in range(self.n):
                match[:, self.n - 1:t] &= tokens[:, self.n - 1 - k:t - k] == tokens[:, t - k:t - k + 1]
        follow = torch.zeros_like(match)
        follow[:, 1:] = match[:, :-1]
        weights = follow.to(v.dtype) / follow.sum(-1, keepdim=True).clamp(min=1)
        heads = torch.einsum("bj,bjd->bd", weights, v)
        return self._output(heads, x), {"tokens": tokens, "v": v}

    def state_size(self, seq_len: int) -> int:
        """A token id and a d_model value per position so far."""
        return seq_len * (self.d_model + 1)
