"""Associative recall and induction head with the semantics of safari / seq_icl.

Both tasks reserve the last two token ids as special tokens: ``copy_prefix`` (``V-2``) marks
the query, ``noop`` (``V-1``) is the answer to a query whose key never appeared. The other
``V-2`` ids are ordinary tokens.

Training may use the all-next-token language-modelling loss of those repositories
(``train_all_tokens``): ``loss_targets`` then holds the next token at every position.
Evaluation always scores only the answer positions (``targets``).
"""

from __future__ import annotations

import torch

from seqicl.seeding import generator
from seqicl.tasks.base import (IGNORE_INDEX, TokenTask, check_bool, check_int, check_n, first_occurrence,
                               register)


def _next_token_targets(seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


@register("associative_recall")
class AssociativeRecall(TokenTask):
    """``k v k v ... k v => k ?``: recall the value bound to the queried key in this sequence.

    Ordinary tokens split into keys (first half) and values (second half). Each sequence draws
    its own random key→value map (values may repeat across keys); ``context_len //
    (key_len + 1)`` pairs follow with keys drawn with replacement; then ``copy_prefix``, a query
    key (uniform over the distinct keys present) and, as the answer, its value. A key may be
    ``key_len`` tokens long. With ``allow_absent_query`` the query is uniform over all keys and
    the answer to an absent key is ``noop``.
    """

    def __init__(self, vocab_size: int = 40, context_len: int = 384, key_len: int = 1,
                 allow_absent_query: bool = False, train_all_tokens: bool = True):
        self.vocab_size = check_int("vocab_size", vocab_size, low=6)
        self.key_len = check_int("key_len", key_len, low=1, high=8)
        self.context_len = check_int("context_len", context_len, low=key_len + 1)
        self.allow_absent_query = check_bool("allow_absent_query", allow_absent_query)
        self.train_all_tokens = check_bool("train_all_tokens", train_all_tokens)
        normal = vocab_size - 2
        self.num_key_tokens = normal // 2
        self.num_values = normal - self.num_key_tokens
        if self.num_key_tokens ** key_len > 1 << 40:
            raise ValueError(f"key_len={key_len} makes too many distinct keys for vocab_size={vocab_size}")
        self.num_pairs = context_len // (key_len + 1)
        self.copy_prefix = vocab_size - 2
        self.noop = vocab_size - 1
        self.seq_len = self.num_pairs * (key_len + 1) + 1 + key_len

    @property
    def train_scored_per_example(self) -> int:
        return self.seq_len if self.train_all_tokens else 1

    def random_guess_accuracy(self) -> float:
        return 1.0 / (self.num_values + (1 if self.allow_absent_query else 0))

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        kt, kl, P = self.num_key_tokens, self.key_len, self.num_pairs
        n_keys = kt ** kl
        kv_map = torch.randint(0, self.num_values, (n, n_keys), generator=g, device=device)
        key_ids = torch.randint(0, n_keys, (n, P), generator=g, device=device)
        if self.allow_absent_query:
            query = torch.randint(0, n_keys, (n,), generator=g, device=device)
        else:
            # Uniform over the distinct keys present: random scores on first occurrences only.
            first = first_occurrence(key_ids)
            scores = torch.rand(n, P, generator=g, device=device).masked_fill(~first, -1.0)
            query = key_ids.gather(1, scores.argmax(dim=1, keepdim=True)).squeeze(1)
        present = (key_ids == query[:, None]).any(dim=1)
        answer = torch.where(present, kt + kv_map.gather(1, query[:, None]).squeeze(1),
                             torch.full_like(query, self.noop))

        pair_values = kt + kv_map.gather(1, key_ids)
        pairs = torch.cat([self._key_tokens(key_ids), pair_values[..., None]], dim=2).reshape(n, -1)
        tail = torch.cat([torch.full((n, 1), self.copy_prefix, device=device),
                          self._key_tokens(query[:, None]).reshape(n, kl), answer[:, None]], dim=1)
        inputs, next_tokens = _next_token_targets(torch.cat([pairs, tail], dim=1))
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, -1] = answer
        batch = {"inputs": inputs, "targets": targets}
        if self.train_all_tokens:
            batch["loss_targets"] = next_tokens
        return batch

    def _key_tokens(self, key_ids: torch.Tensor) -> torch.Tensor:
        """Multi-token keys: the base-``num_key_tokens`` digits of a key id, most significant first."""
        powers = self.num_key_tokens ** torch.arange(self.key_len - 1, -1, -1, device=key_ids.device)
        return (key_ids[..., None] // powers) % self.num_key_tokens


@register("induction_head")
class InductionHead(TokenTask):
    """A random sequence in which ``copy_prefix`` is followed by the same ``induction_len``
    tokens at every trigger; it ends with ``copy_prefix``, and the model must continue with the
    tokens that followed it before.

    ``context_len`` ordinary tokens are drawn uniformly; with probability 1/2 there is one
    trigger, otherwise ``num_triggers`` positions are drawn (positions closer than
    ``induction_len`` to the previous kept one are dropped, as in seq_icl).
    """

    def __init__(self, vocab_size: int = 16, context_len: int = 256, induction_len: int = 1,
                 num_triggers: int = 1, train_all_tokens: bool = True):
        self.vocab_size = check_int("vocab_size", vocab_size, low=4)
        self.induction_len = check_int("induction_len", induction_len, low=1)
        self.context_len = check_int("context_len", context_len, low=induction_len + 2)
        self.num_triggers = check_int("num_triggers", num_triggers, low=1, high=64)
        self.train_all_tokens = check_bool("train_all_tokens", train_all_tokens)
        self.num_normal = vocab_size - 2
        self.copy_prefix = vocab_size - 2
        self.noop = vocab_size - 1
        self.seq_len = context_len + induction_len

    @property
    def train_scored_per_example(self) -> int:
        return self.seq_len if self.train_all_tokens else self.induction_len

    def random_guess_accuracy(self) -> float:
        return 1.0 / self.num_normal

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        L, il = self.context_len, self.induction_len
        seq = torch.randint(0, self.num_normal, (n, L), generator=g, device=device)
        pos = torch.randint(0, L - 1 - il, (n, self.num_triggers), generator=g, device=device)
        pos = pos.sort(dim=1).values
        single = torch.rand(n, generator=g, device=device) < 0.5
        keep = torch.zeros_like(pos, dtype=torch.bool)
        keep[:, 0] = True
        last = pos[:, 0].clone()
        for j in range(1, self.num_triggers):
            ok = (pos[:, j] - last > il) & ~single
            keep[:, j] = ok
            last = torch.where(ok, pos[:, j], last)
        offsets = torch.arange(1, il + 1, device=device)
        to_copy = seq.gather(1, pos[:, :1] + offsets)
        kept_rows, kept_j = keep.nonzero(as_tuple=True)
        p = pos[kept_rows, kept_j]
        seq[kept_rows, p] = self.copy_prefix
        seq[kept_rows[:, None], p[:, None] + offsets] = to_copy[kept_rows]
        full = torch.cat([seq, torch.full((n, 1), self.copy_prefix, device=device), to_copy], dim=1)
        inputs, next_tokens = _next_token_targets(full)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, -il:] = to_copy
        batch = {"inputs": inputs, "targets": targets}
        if self.train_all_tokens:
            batch["loss_targets"] = next_tokens
        return batch
