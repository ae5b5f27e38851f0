"""The MAD synthetic task suite (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures"): in-context recall and its fuzzy and noisy variants, selective copying,
compression and memorization.

Every task exposes MAD's difficulty axes as parameters: ``vocab_size``, ``seq_len``, the
task's own (``frac_noise``, ``num_tokens_to_copy``, motif sizes ...) and the data-size axis
``num_train_examples``. The generators do not read ``num_train_examples``: it is the
training-set size the task recommends, and the MAD experiment configs
(``configs/experiment/mad/``) set ``data.train_size`` from it, so a sweep over data size
changes the task parameter and the recorded ``task_params`` say which size a run used.

Scoring. MAD trains its recall tasks with a next-token loss on every position and evaluates
only the recall positions. Here training and evaluation score the same positions, the recall
positions: the rest of a recall sequence is drawn at random and cannot be predicted, so a loss
on it adds noise without teaching the skill (and the training accuracy then measures the
metric that is reported). Accuracy is micro-averaged over scored positions.

Targets follow the repository's convention: ``targets[:, t]`` is what the model must output
after reading ``inputs[:, :t+1]``, ``-100`` where nothing is scored. The recall and copying
tasks are built as a token stream of ``seq_len + 1`` tokens; ``inputs`` are its first
``seq_len`` tokens and the target at ``t`` is stream token ``t + 1`` wherever that token is an
answer. Compression is the exception: see ``Compression``.
"""

from __future__ import annotations

import torch

from seqicl.errors import ConfigError
from seqicl.seeding import derive_seed, generator
from seqicl.tasks.base import (IGNORE_INDEX, TokenTask, check_float, check_int, check_n, first_occurrence,
                               pack_units, register, sample_distinct)

_MAX_REJECTION_ROUNDS = 10_000


def _next_token_batch(stream: torch.Tensor, answer: torch.Tensor) -> dict:
    """Inputs ``stream[:, :-1]``; the target at ``t`` is ``stream[:, t+1]`` where ``answer[:, t+1]``."""
    return {"inputs": stream[:, :-1].contiguous(),
            "targets": torch.where(answer[:, 1:], stream[:, 1:], IGNORE_INDEX)}


def _recall_batch(n: int, seq_len: int, num_keys: int, value_of: torch.Tensor, g: torch.Generator,
                  num_noise: int = 0, noise_low: int = 0, noise_vocab: int = 1) -> dict:
    """Key-value pairs ``k v``, keys uniform over ``[0, num_keys)``, values from each row's map
    ``value_of`` (n, num_keys), with ``num_noise`` single noise tokens from
    ``[noise_low, noise_low + noise_vocab)`` placed between pairs in a uniformly random order
    (the stream ends with a pair, so all the noise tokens fall inside the sequence).

    The answer at a key that already occurred earlier in the row is its value.
    """
    device = g.device
    pairs = (seq_len - num_noise + 2) // 2  # 2 * pairs + num_noise >= seq_len + 1: every input key has its value
    units = pairs + num_noise
    keys = torch.randint(0, num_keys, (n, units), generator=g, device=device)
    is_pair = torch.ones(n, units, dtype=torch.bool, device=device)
    noise, first = keys, keys
    if num_noise:
        is_pair[:, :-1] = torch.rand(n, units - 1, generator=g, device=device).argsort(dim=1) < pairs - 1
        noise = torch.randint(noise_low, noise_low + noise_vocab, (n, units), generator=g, device=device)
        first = torch.where(is_pair, keys, num_keys + torch.arange(units, device=device))  # noise never repeats
    recalled = is_pair & ~first_occurrence(first)
    tokens = torch.stack([torch.where(is_pair, keys, noise), value_of.gather(1, keys)], dim=2)
    valid = torch.stack([torch.ones_like(is_pair), is_pair], dim=2)
    answer = torch.stack([torch.zeros_like(recalled), recalled], dim=2)
    stream, answer = pack_units(tokens, valid, seq_len + 1, 0, answer)
    return _next_token_batch(stream, answer)


def _check_common(task, vocab_size, seq_len, num_train_examples, min_vocab: int, min_len: int) -> None:
    task.vocab_size = check_int("vocab_size", vocab_size, low=min_vocab)
    task.seq_len = check_int("seq_len", seq_len, low=min_len)
    task.num_train_examples = check_int("num_train_examples", num_train_examples, low=1)


@register("in_context_recall")
class InContextRecall(TokenTask):
    """Multi-query in-context recall.

    Keys are ``[0, V/2)``, values ``[V/2, V)``. Each sequence draws its own one-to-one map from
    all keys to values, then a stream of pairs ``k v k v ...`` with keys drawn uniformly with
    replacement. Every key that already occurred earlier in the sequence is a query: its target
    (at the key's position) is the value bound to it. First occurrences are not scored.
    """

    def __init__(self, vocab_size: int = 16, seq_len: int = 128, num_train_examples: int = 12_800):
        _check_common(self, vocab_size, seq_len, num_train_examples, min_vocab=4, min_len=4)
        self.num_keys = vocab_size // 2
        self.num_values = vocab_size - self.num_keys

    def random_guess_accuracy(self) -> float:
        return 1.0 / self.num_values

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        value_of = self.num_keys + sample_distinct(n, self.num_keys, 0, self.num_values, g)
        return _recall_batch(n, self.seq_len, self.num_keys, value_of, g)


@register("noisy_in_context_recall")
class NoisyInContextRecall(TokenTask):
    """In-context recall with noise tokens between the key-value pairs.

    The last ``noise_vocab_size`` ids ``[V - noise_vocab_size, V)`` are noise; the others are
    split into keys (first half) and values as in ``in_context_recall`` (so ``vocab_size``
    counts the noise vocabulary, as in MAD). Exactly ``round(frac_noise * seq_len)`` noise
    tokens, uniform over the noise vocabulary, sit between pairs (never between a key and its
    value) in a uniformly random arrangement. Noise tokens are never scored.
    """

    def __init__(self, vocab_size: int = 32, seq_len: int = 128, noise_vocab_size: int = 16,
                 frac_noise: float = 0.2, num_train_examples: int = 12_800):
        _check_common(self, vocab_size, seq_len, num_train_examples, min_vocab=5, min_len=4)
        self.noise_vocab_size = check_int("noise_vocab_size", noise_vocab_size, low=1, high=vocab_size - 4)
        self.frac_noise = check_float("frac_noise", frac_noise, low=0.0, high=1.0)
        self.num_noise = round(self.frac_noise * seq_len)
        if seq_len - self.num_noise < 4:
            raise ConfigError(f"frac_noise={frac_noise} leaves {seq_len - self.num_noise} of seq_len={seq_len} "
                              f"positions for key-value pairs; at least 4 are needed")
        clean = vocab_size - noise_vocab_size
        self.num_keys = clean // 2
        self.num_values = clean - self.num_keys
        self.noise_low = clean

    def random_guess_accuracy(self) -> float:
        return 1.0 / self.num_values

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        value_of = self.num_keys + sample_distinct(n, self.num_keys, 0, self.num_values, g)
        return _recall_batch(n, self.seq_len, self.num_keys, value_of, g, num_noise=self.num_noise,
                             noise_low=self.noise_low, noise_vocab=self.noise_vocab_size)


@register("fuzzy_in_context_recall")
class FuzzyInContextRecall(TokenTask):
    """In-context recall whose keys and values are motifs of several adjacent tokens.

    Keys are made of tokens ``[0, V/2)``, values of tokens ``[V/2, V)``. Each sequence draws
    ``num_kv_pairs`` key motifs (lengths uniform on ``1..k_motif_size``, tokens uniform) and
    binds a value motif to each (lengths uniform on ``1..v_motif_size``, tokens uniform). The
    key motifs of a sequence are distinct and prefix-free (no key is the start of another),
    drawn by rejection: when its last token has been read a key is complete, so every scored
    target is determined by what came before it. The sequence is a stream of key-value motif
    pairs, keys drawn uniformly with replacement. For every key that already occurred earlier,
    its value motif is scored token by token: the target at the key's last token is the
    value's first token, the target at each value token but the last is the next one.
    """

    def __init__(self, vocab_size: int = 16, seq_len: int = 128, k_motif_size: int = 3,
                 v_motif_size: int = 3, num_kv_pairs: int = 8, num_train_examples: int = 12_800):
        _check_common(self, vocab_size, seq_len, num_train_examples, min_vocab=4, min_len=4)
        self.k_motif_size = check_int("k_motif_size", k_motif_size, low=1, high=16)
        self.v_motif_size = check_int("v_motif_size", v_motif_size, low=1, high=16)
        self.num_keys = vocab_size // 2
        self.num_values = vocab_size - self.num_keys
        self.num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs, low=1,
                                      high=min(self.num_keys ** k_motif_size, 256))
        # num_kv_pairs + 1 pairs of the longest motifs fit, so some key occurs twice in every
        # sequence and every sequence has a scored value.
        shortest = (self.num_kv_pairs + 1) * (self.k_motif_size + self.v_motif_size) - 1
        if self.seq_len < shortest:
            raise ConfigError(f"fuzzy_in_context_recall: seq_len={self.seq_len} is too short to recall a key in every "
                              f"sequence; num_kv_pairs + 1 pairs of up to k_motif_size + v_motif_size tokens need "
                              f"seq_len >= {shortest}")
        self._draw_keys(8, generator(0))  # a setting whose key sets are too hard to draw fails here

    def random_guess_accuracy(self) -> float:
        return 1.0 / self.num_values

    def _draw_keys(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (n, D, k_motif_size), lengths (n, D)): prefix-free key motifs, by rejection."""
        D, m, device = self.num_kv_pairs, self.k_motif_size, g.device

        def draw(rows: int):
            return (torch.randint(0, self.num_keys, (rows, D, m), generator=g, device=device),
                    torch.randint(1, m + 1, (rows, D), generator=g, device=device))

        tokens, lengths = draw(n)
        bad = _prefix_pairs(tokens, lengths)
        for _ in range(_MAX_REJECTION_ROUNDS):
            if not bool(bad.any()):
                return tokens, lengths
            idx = bad.nonzero().squeeze(1)
            tokens[idx], lengths[idx] = draw(idx.numel())
            bad = torch.zeros_like(bad)
            bad[idx] = _prefix_pairs(tokens[idx], lengths[idx])
        raise ConfigError(
            f"num_kv_pairs={D} prefix-free keys of 1..k_motif_size={m} tokens over {self.num_keys} key tokens "
            f"(vocab_size={self.vocab_size}) are too rarely drawn; lower num_kv_pairs or raise vocab_size")

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        D, mk, mv, L = self.num_kv_pairs, self.k_motif_size, self.v_motif_size, self.seq_len
        key_tok, key_len = self._draw_keys(n, g)
        val_tok = torch.randint(self.num_keys, self.vocab_size, (n, D, mv), generator=g, device=device)
        val_len = torch.randint(1, mv + 1, (n, D), generator=g, device=device)
        pairs = (L + 2) // 2  # every pair has at least 2 tokens: the stream reaches L + 1 tokens
        which = torch.randint(0, D, (n, pairs), generator=g, device=device)
        recalled = ~first_occurrence(which)

        def pick(x):
            return x.gather(1, which.view(n, pairs, *([1] * (x.dim() - 2))).expand(n, pairs, *x.shape[2:]))

        tokens = torch.cat([pick(key_tok), pick(val_tok)], dim=2)
        valid = torch.cat([torch.arange(mk, device=device) < pick(key_len)[..., None],
                           torch.arange(mv, device=device) < pick(val_len)[..., None]], dim=2)
        answer = torch.cat([torch.zeros(n, pairs, mk, dtype=torch.bool, device=device),
                            recalled[..., None].expand(n, pairs, mv)], dim=2)
        stream, answer = pack_units(tokens, valid, L + 1, 0, answer)
        return _next_token_batch(stream, answer)


def _prefix_pairs(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rows (n,) in which some motif equals or starts another; motifs (n, D, m) of ``lengths`` (n, D)."""
    D, m = tokens.shape[1:]
    beyond = torch.arange(m, device=tokens.device) >= lengths[:, :, None, None]
    agree = ((tokens[:, :, None, :] == tokens[:, None, :, :]) | beyond).all(dim=-1)
    prefix = agree & (lengths[:, :, None] <= lengths[:, None, :])
    prefix &= ~torch.eye(D, dtype=torch.bool, device=tokens.device)
    return prefix.flatten(1).any(dim=1)


@register("selective_copying")
class SelectiveCopying(TokenTask):
    """Copy the content tokens of a noisy sequence, in order, after a copy marker.

    Id 0 is the noise token, id 1 the copy marker, ids ``[2, V)`` are content. The first
    ``seq_len - num_tokens_to_copy`` positions hold ``num_tokens_to_copy`` content tokens
    (uniform, with replacement) at uniformly random distinct positions, noise elsewhere; then
    the copy marker and the content tokens again, in order. The target at the marker is the
    first content token, the target at each copied token the next one: the model writes the
    copy token by token, reading what it wrote (teacher forcing).
    """

    noise_token = 0
    copy_token = 1

    def __init__(self, vocab_size: int = 16, seq_len: int = 256, num_tokens_to_copy: int = 16,
                 num_train_examples: int = 12_800):
        _check_common(self, vocab_size, seq_len, num_train_examples, min_vocab=3, min_len=2)
        self.num_tokens_to_copy = check_int("num_tokens_to_copy", num_tokens_to_copy, low=1, high=seq_len // 2)

    def random_guess_accuracy(self) -> float:
        return 1.0 / (self.vocab_size - 2)

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        k = self.num_tokens_to_copy
        context = self.seq_len - k
        content = torch.randint(2, self.vocab_size, (n, k), generator=g, device=device)
        where = sample_distinct(n, k, 0, context, g).sort(dim=1).values
        ctx = torch.full((n, context), self.noise_token, dtype=torch.long, device=device)
        ctx.scatter_(1, where, content)
        marker = torch.full((n, 1), self.copy_token, dtype=torch.long, device=device)
        stream = torch.cat([ctx, marker, content], dim=1)
        answer = torch.zeros_like(stream, dtype=torch.bool)
        answer[:, context + 1:] = True
        return _next_token_batch(stream, answer)


@register("compression")
class Compression(TokenTask):
    """Compress a random sequence into one vector and decode every token back from it.

    ``inputs`` are ``seq_len`` tokens uniform over ``[0, V)``; ``targets`` are the inputs
    themselves, all scored. This task is served by the ``autoencoder`` backbone: the encoder
    reads the whole sequence followed by an aggregation token, and an MLP decodes token ``t``
    from the aggregation token's final state and position ``t`` alone. So ``targets[:, t]`` is
    the token at ``t`` recovered from the compressed state, not a prediction after reading
    ``inputs[:, :t+1]`` (with a causal language model the task would be trivial copying).
    """

    backbone = "autoencoder"

    def __init__(self, vocab_size: int = 16, seq_len: int = 32, num_train_examples: int = 12_800):
        _check_common(self, vocab_size, seq_len, num_train_examples, min_vocab=2, min_len=1)

    def random_guess_accuracy(self) -> float:
        return 1.0 / self.vocab_size

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        inputs = torch.randint(0, self.vocab_size, (n, self.seq_len), generator=g, device=device)
        return {"inputs": inputs, "targets": inputs.clone()}


@register("memorization")
class Memorization(TokenTask):
    """Recall facts from a key→value map that is fixed across all sequences and splits.

    Keys are ``[0, V/2)``, values ``[V/2, V)``. The map (each key's value uniform over the
    values, independently) is a function of ``map_seed`` only: memorising it from the training
    data is the task. A sequence is a stream of pairs ``k v`` whose keys are distinct, so no
    answer can be read from the sequence itself; the target at every key is its value.
    """

    def __init__(self, vocab_size: int = 256, seq_len: int = 32, map_seed: int = 0,
                 num_train_examples: int = 256):
        _check_common(self, vocab_size, seq_len, num_train_examples, min_vocab=4, min_len=2)
        self.map_seed = check_int("map_seed", map_seed, low=0)
        self.num_keys = vocab_size // 2
        self.num_values = vocab_size - self.num_keys
        self.num_pairs = (seq_len + 2) // 2
        if self.num_pairs > self.num_keys:
            raise ConfigError(f"seq_len={seq_len} holds {self.num_pairs} pairs with distinct keys, more than the "
                              f"{self.num_keys} keys of vocab_size={vocab_size}; use vocab_size >= {2 * self.num_pairs}")
        g = generator(derive_seed("memorization", map_seed))
        self._value_of = self.num_keys + torch.randint(0, self.num_values, (self.num_keys,), generator=g)

    def value_map(self) -> torch.Tensor:
        """The fixed map: ``value_map()[k]`` is the value of key ``k``."""
        return self._value_of.clone()

    def random_guess_accuracy(self) -> float:
        return 1.0 / self.num_values

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        keys = sample_distinct(n, self.num_pairs, 0, self.num_keys, g)
        values = self._value_of.to(keys.device)[keys]
        stream = torch.stack([keys, values], dim=2).reshape(n, -1)[:, :self.seq_len + 1]
        answer = torch.zeros_like(stream, dtype=torch.bool)
        answer[:, 1::2] = True
        return _next_token_batch(stream, answer)
