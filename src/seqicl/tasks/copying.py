"""Copying (the copying experiments of seq_icl): a random string, a copy marker, the string again.

Ids ``[0, V-1)`` are ordinary tokens and ``V-1`` is the copy marker. A sequence is
``s_1 … s_n <copy> s_1 … s_n`` with ``n = string_len`` tokens drawn uniformly with replacement;
``inputs`` are its first ``2n`` tokens (``seq_len = 2n``). The model writes the copy token by
token, reading what it wrote: the target at the marker is ``s_1`` and the target at the
``j``-th copied token is ``s_{j+1}``.

Evaluation scores the copy part only. ``train_all_tokens`` chooses what training scores: the
copy part as well (false) or every next token, the random string included, as seq_icl's
language-modelling loss does (true: ``loss_targets`` holds the next token everywhere). The
string itself is random, so scoring it only adds chance-level positions to the metric.
"""

from __future__ import annotations

import torch

from seqicl.seeding import generator
from seqicl.tasks.base import IGNORE_INDEX, TokenTask, check_bool, check_int, check_n, register


@register("copying")
class Copying(TokenTask):
    def __init__(self, vocab_size: int = 16, string_len: int = 32, train_all_tokens: bool = True):
        self.vocab_size = check_int("vocab_size", vocab_size, low=3)
        self.string_len = check_int("string_len", string_len, low=1)
        self.train_all_tokens = check_bool("train_all_tokens", train_all_tokens)
        self.copy_token = vocab_size - 1
        self.seq_len = 2 * string_len

    def random_guess_accuracy(self) -> float:
        return 1.0 / (self.vocab_size - 1)

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        s = torch.randint(0, self.vocab_size - 1, (n, self.string_len), generator=g, device=device)
        marker = torch.full((n, 1), self.copy_token, dtype=torch.long, device=device)
        stream = torch.cat([s, marker, s], dim=1)
        inputs = stream[:, :-1].contiguous()
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, self.string_len:] = s
        batch = {"inputs": inputs, "targets": targets}
        if self.train_all_tokens:
            batch["loss_targets"] = stream[:, 1:].contiguous()
        return batch
