"""Multi-query associative recall (MQAR), with zoology's semantics (Arora et al. 2023).

A sequence starts with ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...``; each key is then
queried once, later in the sequence. The target sits at the query key's position: after
reading the key again, the model must output the value that followed it. Keys come from
``[1, V/2)``, values from ``[V/2, V)``, both distinct within a sequence. Query positions are
drawn without replacement from the even offsets after the context, with probability
``∝ x^(power_a - 1)`` (small ``power_a`` puts queries close to the context).

Difference from zoology's generator: with ``random_non_queries`` the filler tokens are drawn
from the vocabulary *minus the sequence's keys*, so a key occurs exactly twice (once in the
context, once as its query) and the task is unambiguous.
"""

from __future__ import annotations

import torch

from seqicl.seeding import generator
from seqicl.tasks.base import (IGNORE_INDEX, TokenTask, check_bool, check_float, check_int,
                               check_n, gumbel_topk, register, sample_distinct, sample_excluding)


@register("mqar")
class MQAR(TokenTask):
    def __init__(self, vocab_size: int = 8192, seq_len: int = 64, num_kv_pairs: int = 4,
                 power_a: float = 0.01, random_non_queries: bool = True):
        self.vocab_size = check_int("vocab_size", vocab_size, low=4)
        self.seq_len = check_int("seq_len", seq_len, low=4)
        self.num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs, low=1)
        self.power_a = check_float("power_a", power_a, low=0.0, low_open=True)
        self.random_non_queries = check_bool("random_non_queries", random_non_queries)
        if 4 * num_kv_pairs > seq_len:
            raise ValueError(
                f"num_kv_pairs={num_kv_pairs} needs seq_len >= 4*num_kv_pairs={4 * num_kv_pairs} "
                f"(the pairs and one query slot per pair); got seq_len={seq_len}")
        if vocab_size // 2 - 1 < num_kv_pairs:
            raise ValueError(
                f"vocab_size={vocab_size} has {vocab_size // 2 - 1} key tokens, fewer than "
                f"num_kv_pairs={num_kv_pairs}; use vocab_size >= {2 * num_kv_pairs + 2}")

    @property
    def train_scored_per_example(self) -> int:
        return self.num_kv_pairs

    def random_guess_accuracy(self) -> float:
        return 1.0 / (self.vocab_size - self.vocab_size // 2)

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        V, L, k = self.vocab_size, self.seq_len, self.num_kv_pairs
        half = V // 2
        keys = sample_distinct(n, k, 1, half, g)
        values = sample_distinct(n, k, half, V, g)

        space = (L - 2 * k) // 2
        x = torch.arange(1, space + 1, dtype=torch.float64, device=device)
        logp = (torch.log(torch.tensor(self.power_a, dtype=torch.float64))
                + (self.power_a - 1) * torch.log(x))
        gaps = gumbel_topk(logp.float().expand(n, space), k, g)
        query_pos = 2 * k + 2 * gaps

        if self.random_non_queries:
            inputs = sample_excluding(keys, V, (L,), g)
        else:
            inputs = torch.zeros(n, L, dtype=torch.long, device=device)
        inputs[:, 0:2 * k:2] = keys
        inputs[:, 1:2 * k:2] = values
        inputs.scatter_(1, query_pos, keys)
        targets = torch.full((n, L), IGNORE_INDEX, dtype=torch.long, device=device)
        targets.scatter_(1, query_pos, values)
        return {"inputs": inputs, "targets": targets}
