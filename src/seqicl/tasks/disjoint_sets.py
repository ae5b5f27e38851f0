"""Set disjointness (Arora et al. 2024, "Just read twice"): name the one token two sets share.

Id 0 is the separator, id 1 the answer marker, ids ``[2, V)`` are elements. A sequence is

    a_1 … a_{size_a}  <sep>  b_1 … b_{size_b}  <ans>

(``seq_len = size_a + size_b + 2``). The elements of each set are distinct, and the two sets
share exactly one element, uniform over the elements; apart from it, ``size_a + size_b - 2``
further distinct elements fill the sets, each set in a uniformly random order (so the shared
element sits at a uniform position in both). The one scored target is at ``<ans>``: the shared
element. Order matters for recurrent models, which must hold the first set in their state while
reading the second: ``size_a < size_b`` puts the short set first.
"""

from __future__ import annotations

import torch

from seqicl.errors import ConfigError
from seqicl.seeding import generator
from seqicl.tasks.base import (IGNORE_INDEX, TokenTask, check_int, check_n, register, sample_distinct,
                               shuffle_rows)


@register("disjoint_sets")
class DisjointSets(TokenTask):
    sep_token = 0
    answer_token = 1

    def __init__(self, vocab_size: int = 64, size_a: int = 8, size_b: int = 8):
        self.vocab_size = check_int("vocab_size", vocab_size, low=3)
        self.size_a = check_int("size_a", size_a, low=1)
        self.size_b = check_int("size_b", size_b, low=1)
        if size_a + size_b - 1 > vocab_size - 2:
            raise ConfigError(f"size_a={size_a} and size_b={size_b} need {size_a + size_b - 1} distinct elements, "
                              f"more than the {vocab_size - 2} of vocab_size={vocab_size}; use vocab_size >= "
                              f"{size_a + size_b + 1}")
        self.seq_len = size_a + size_b + 2

    def random_guess_accuracy(self) -> float:
        return 1.0 / (self.vocab_size - 2)

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        a, b = self.size_a, self.size_b
        elems = sample_distinct(n, a + b - 1, 2, self.vocab_size, g)
        shared = elems[:, :1]
        set_a = shuffle_rows(elems[:, :a], g)
        set_b = shuffle_rows(torch.cat([shared, elems[:, a:]], dim=1), g)
        sep = torch.full((n, 1), self.sep_token, dtype=torch.long, device=device)
        ans = torch.full((n, 1), self.answer_token, dtype=torch.long, device=device)
        inputs = torch.cat([set_a, sep, set_b, ans], dim=1)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, -1] = shared[:, 0]
        return {"inputs": inputs, "targets": targets}
