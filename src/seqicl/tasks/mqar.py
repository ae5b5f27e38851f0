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

``mqar_multi`` trains on a mixture of (seq_len, num_kv_pairs) settings and tests on others,
e.g. longer ones (length extrapolation, as in Based).
"""

from __future__ import annotations

import copy

import torch

from seqicl.errors import ConfigError
from seqicl.seeding import derive_seed, generator
from seqicl.tasks.base import (SPLITS, IGNORE_INDEX, TokenTask, check_bool, check_choice, check_float, check_int,
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


BASED_TRAIN_SLICES = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))
BASED_TEST_SLICES = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64), (512, 64), (512, 128), (1024, 256))


@register("mqar_multi")
class MQARMulti(TokenTask):
    """MQAR over several slices ``(seq_len, num_kv_pairs)``: train on some, test on others.

    Training examples come from ``train_slices``; validation and test examples from
    ``test_slices`` (validation is a held-out sample of the distribution that test reports on),
    which may be longer than any training slice. Each example belongs to one slice, the slices
    in equal shares (within one) and random order; an example is an ``mqar`` example of its
    slice's ``seq_len`` and ``num_kv_pairs`` (with the shared ``vocab_size``, ``power_a`` and
    ``random_non_queries``), padded with token 0 to the longest slice of either list, this
    task's ``seq_len``, with targets -100 on the padding. Batches also carry each example's
    ``seq_len`` and ``num_kv_pairs``.

    ``eval_stats`` reports ``accuracy_seq{L}_kv{k}`` for every test slice, micro-averaged over
    that slice's scored positions, beside the overall accuracy.
    """

    def __init__(self, vocab_size: int = 8192, train_slices=BASED_TRAIN_SLICES, test_slices=BASED_TEST_SLICES,
                 power_a: float = 0.01, random_non_queries: bool = True):
        self.vocab_size = check_int("vocab_size", vocab_size, low=4)
        self.power_a = check_float("power_a", power_a, low=0.0, low_open=True)
        self.random_non_queries = check_bool("random_non_queries", random_non_queries)
        self.train_slices = self._check_slices("train_slices", train_slices)
        self.test_slices = self._check_slices("test_slices", test_slices)
        self.seq_len = max(L for L, _ in self.train_slices + self.test_slices)
        self._draw = "train"

    def _check_slices(self, name: str, value) -> tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) == 0:
            raise ConfigError(f"{name} must be a non-empty list of [seq_len, num_kv_pairs] pairs, got {value!r}")
        slices = []
        for i, pair in enumerate(value):
            if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ConfigError(f"{name}[{i}] must be a pair [seq_len, num_kv_pairs], got {pair!r}")
            try:
                task = MQAR(vocab_size=self.vocab_size, seq_len=pair[0], num_kv_pairs=pair[1],
                            power_a=self.power_a, random_non_queries=self.random_non_queries)
            except ValueError as e:
                raise ConfigError(f"{name}[{i}]={list(pair)!r}: {e}") from None
            slices.append((task.seq_len, task.num_kv_pairs))
        if len(set(slices)) < len(slices):
            raise ConfigError(f"{name} lists a (seq_len, num_kv_pairs) pair twice: {value!r}")
        return tuple(slices)

    def random_guess_accuracy(self) -> float:
        return 1.0 / (self.vocab_size - self.vocab_size // 2)

    def split_view(self, split: str, seed: int = 0) -> "MQARMulti":
        """Training draws the training slices; validation and test draw the test slices."""
        check_choice("split", split, SPLITS)
        if split == "train":
            return self
        view = copy.copy(self)
        view._draw = "test"
        return view

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        slices = self.train_slices if self._draw == "train" else self.test_slices
        which = (torch.arange(n, device=device) % len(slices))[torch.rand(n, generator=g, device=device).argsort()]
        inputs = torch.zeros(n, self.seq_len, dtype=torch.long, device=device)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        lengths, pairs = torch.zeros(n, dtype=torch.long, device=device), torch.zeros_like(inputs[:, 0])
        for i, (L, k) in enumerate(slices):
            idx = (which == i).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            part = MQAR(vocab_size=self.vocab_size, seq_len=L, num_kv_pairs=k, power_a=self.power_a,
                        random_non_queries=self.random_non_queries
                        ).sample(idx.numel(), seed=derive_seed(seed, "slice", L, k), device=device)
            inputs[idx, :L] = part["inputs"]
            targets[idx, :L] = part["targets"]
            lengths[idx], pairs[idx] = L, k
        return {"inputs": inputs, "targets": targets, "seq_len": lengths, "num_kv_pairs": pairs}

    def eval_stats(self, batch: dict, mask: torch.Tensor, logits: torch.Tensor, **_) -> dict:
        correct = logits.argmax(dim=-1) == batch["targets"][mask]
        lengths = batch["seq_len"][:, None].expand_as(mask)[mask]
        pairs = batch["num_kv_pairs"][:, None].expand_as(mask)[mask]
        stats = {}
        for L, k in self.test_slices:
            sel = (lengths == L) & (pairs == k)
            stats[f"accuracy_seq{L}_kv{k}"] = ((correct & sel).sum().float(), sel.sum().float())
        return stats
