"""Continuing token prefixes with a model's incremental decoding (``init_state``/``step``).

Every row reads its own prefix and then its own output, one token per step, all rows in
lockstep: a row whose prefix is shorter starts generating earlier. Each token is read once;
nothing is re-run over the whole sequence.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def continue_prefixes(model: nn.Module, prefixes: torch.Tensor, lengths: torch.Tensor, max_new: int, stop: int,
                      temperature: torch.Tensor | None = None, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue row ``i``'s prefix ``prefixes[i, :lengths[i]]`` until it emits ``stop`` or has
    ``max_new`` tokens.

    ``temperature`` (per row; ``None``: all greedy) picks each next token: 0 takes the argmax,
    a positive value samples from ``softmax(logits / temperature)`` with ``generator``.
    Returns the generated tokens (n, max_new), -1 after each row's end, and how many each row
    generated (``stop`` included when it came).
    """
    n = prefixes.shape[0]
    device = prefixes.device
    rows = torch.arange(n, device=device)
    out = torch.full((n, max_new), -1, dtype=torch.long, device=device)
    count = torch.zeros(n, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    state = model.init_state(n)
    token = prefixes[:, 0]
    for t in range(int(lengths.max()) + max_new - 1):
        logits, state = model.step(token, state)
        chosen = choose_next(logits.float(), temperature, generator)
        writing = (t >= lengths - 1) & ~done
        out[rows[writing], count[writing]] = chosen[writing]
        count += writing
        done |= writing & ((chosen == stop) | (count >= max_new))
        if bool(done.all()):
            break
        ahead = prefixes[:, min(t + 1, prefixes.shape[1] - 1)]
        token = torch.where(t + 1 < lengths, ahead, chosen)
    return out, count


def choose_next(logits: torch.Tensor, temperature: torch.Tensor | None, generator) -> torch.Tensor:
    """(n,) next tokens from ``logits`` (n, V): row ``i`` takes ``argmax_v logits[i, v]`` (the lowest
    id among ties) where ``temperature[i] == 0`` (or ``temperature`` is None), else a draw from
    ``softmax(logits[i] / temperature[i])`` with ``generator``."""
    greedy = logits.argmax(dim=-1)
    if temperature is None:
        return greedy
    scale = temperature.clamp(min=1e-6)[:, None]
    sampled = torch.multinomial((logits / scale).softmax(dim=-1), 1, generator=generator)[:, 0]
    return torch.where(temperature > 0, sampled, greedy)
