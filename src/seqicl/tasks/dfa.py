"""In-context language learning on random regular languages: RegBench (Akyürek et al. 2024,
"In-Context Language Learning: Architectures and Algorithms").

An example is a random probabilistic finite automaton (PFA) and a sequence of strings it
generated. A model reads the strings as a language model and must continue them as the
automaton would, so it has to infer the language in context. Train, validation and test
examples come from disjoint languages.

Automata
    A DFA is drawn as in the paper: a number of states ``n`` uniform in
    [min_states, max_states]; an alphabet of ``c`` letters, ``c`` uniform in
    [min_alphabet, max_alphabet], chosen from the ``num_letters`` letters; for every state,
    ``m`` outgoing edges, ``m`` uniform in [min_edges, max_edges], on distinct letters of the
    alphabet, each to a uniformly chosen *other* state. The start state is 0 and every state is
    accepting. The DFA is trimmed (states unreachable from the start are dropped) and minimised
    (Moore's partition refinement). A draw whose minimal DFA has fewer than ``min_states``
    states, or a self-loop (minimisation merged a state with its successor), is drawn again, so
    the state count and the absence of self-loops hold for the automaton the data come from.
    Its states are numbered in breadth-first order from the start state, following letters in
    increasing order: this canonical form (``canonical_form``) identifies the language, since
    the minimal DFA of a language is unique up to the names of its states.

PFA and strings
    From each state, every outgoing edge has probability 1 / (the state's number of edges). A
    string has a length uniform in [min_length, max_length] and is the letters of a random walk
    of that length from state 0; every state is accepting, so every walk spells a string of the
    language. An example holds a number of strings uniform in [min_strings, max_strings].

Tokens
    Letters are ids ``0 .. num_letters-1``, the delimiter ``|`` is ``num_letters`` and the pad
    is ``num_letters + 1`` (``vocab_size = num_letters + 2``). The token stream
    ``| s1 | s2 | ... | sk |`` is read as a language model: ``inputs`` is the stream without its
    last token and ``targets`` the stream shifted by one, so every letter (each string's first
    letter included) and every string's end (the delimiter) is predicted. Both are padded to
    ``seq_len = max_strings * (max_length + 1)``: pad in ``inputs``, -100 in ``targets``.

Splits
    A language belongs to one split, chosen by the SHA-256 hash of its canonical form: a tenth
    of the hash values are test languages, a tenth validation languages, the rest training
    languages. ``split_view(split, seed)`` draws only that split's languages, so the automata of
    the splits are disjoint as languages whatever the seeds and sizes, and the test set does not
    depend on the training settings. With ``num_train_automata`` set, the training view draws
    from a fixed pool of that many distinct training languages, built from the run's seed;
    consecutive examples of one sample walk through a seeded permutation of the pool, so a
    training set of ``num_train_automata`` examples holds every automaton once (the paper's
    learning-curve axis). ``sample`` on the task itself draws from all languages.

Metrics (``eval_stats``; micro-averaged over scored positions)
    dfa_accuracy
        The model's greedy next token (argmax over the whole vocabulary) is a valid
        continuation: an outgoing letter of the current state, or the delimiter (every state is
        accepting; right after a delimiter it ends the empty string, also in the language).
    tvd
        Total variation ``1/2 sum_v |q(v) - p(v)|`` between the model's next-symbol
        distribution ``q`` (softmax over the letters and the delimiter; the pad is left out)
        and the true one ``p``. The delimiter is part of ``p``, as the end of the string: its
        probability is that of the string ending after the ``j`` letters of it read so far,
        ``P(length = j | length >= j) = 1 / (max_length - j + 1)`` for ``j >= min_length``,
        else 0. The letters share the rest uniformly over the current state's outgoing edges.
        ``p`` is the exact distribution of the next token given the automaton, so a model that
        knew the automaton would score 0.
    ngram2_dfa_accuracy, ngram2_tvd, ngram3_dfa_accuracy, ngram3_tvd
        The same metrics for in-context n-gram predictors computed on the same sequences. The
        n-gram predictor's distribution after position ``t`` is that of the tokens that followed
        the earlier occurrences (in the same sequence) of the last ``n-1`` tokens; it backs off
        to the last ``n-2`` tokens when that context never occurred before, down to the
        frequencies of all earlier next tokens, and is uniform over the letters and the
        delimiter at the first position. Its greedy token breaks ties towards the lowest id.
"""

from __future__ import annotations

import copy
import hashlib
import random

import torch
import torch.nn.functional as F

from seqicl.errors import ConfigError
from seqicl.seeding import derive_seed, generator
from seqicl.tasks.base import IGNORE_INDEX, SPLITS, TokenTask, check_choice, check_int, check_n, register

# A language's split is the bucket of its canonical form's hash: 1/10 test, 1/10 val, 8/10 train.
HASH_BUCKETS = 10
SPLIT_BUCKETS = {"test": range(0, 1), "val": range(1, 2), "train": range(2, HASH_BUCKETS)}
# Draws for one automaton before the parameters are declared (nearly) unsatisfiable.
MAX_DRAWS = 10_000

Edges = list  # edges[state] is a dict {letter: next state}


def reachable_order(edges: Edges, start: int = 0) -> list[int]:
    """The states reachable from ``start`` in breadth-first order, letters in increasing order."""
    order, seen, i = [start], {start}, 0
    while i < len(order):
        out = edges[order[i]]
        for letter in sorted(out):
            if out[letter] not in seen:
                seen.add(out[letter])
                order.append(out[letter])
        i += 1
    return order


def _renumber(edges: Edges, order: list[int]) -> Edges:
    """The automaton restricted to the states in ``order``, state ``order[i]`` renamed ``i``."""
    name = {s: i for i, s in enumerate(order)}
    return [{a: name[t] for a, t in edges[s].items()} for s in order]


def minimise(edges: Edges, start: int = 0) -> Edges:
    """The minimal trimmed DFA of the language of ``edges`` (every state accepting), canonically numbered.

    Trimming keeps the states reachable from ``start``. Moore's partition refinement starts
    from a single block (every state accepts; a missing edge leads to the implicit rejecting
    sink) and splits blocks by (block, {letter: block of the successor}) until no block splits;
    the blocks are the states of the minimal DFA.
    """
    edges = _renumber(edges, reachable_order(edges, start))
    block, count = [0] * len(edges), 1
    while True:
        signatures: dict = {}
        refined = [signatures.setdefault((block[s], tuple(sorted((a, block[t]) for a, t in out.items()))),
                                         len(signatures))
                   for s, out in enumerate(edges)]
        if len(signatures) == count:
            break
        block, count = refined, len(signatures)
    quotient: Edges = [None] * count
    for s, out in enumerate(edges):
        if quotient[block[s]] is None:
            quotient[block[s]] = {a: block[t] for a, t in out.items()}
    return _renumber(quotient, reachable_order(quotient, block[0]))


def canonical_form(edges: Edges, num_letters: int, start: int = 0) -> bytes:
    """Bytes that identify an automaton up to the names of its states.

    The states reachable from ``start`` are numbered in breadth-first order (letters in
    increasing order); the bytes are the number of states, then for every state and every letter
    ``0 .. num_letters-1`` the next state plus one (0: no edge). For a minimal automaton they
    identify its language.
    """
    table = _renumber(edges, reachable_order(edges, start))
    out = bytearray([len(table)])
    for state in table:
        out.extend(state.get(a, -1) + 1 for a in range(num_letters))
    return bytes(out)


def language_split(canon: bytes) -> str:
    """The split (``train``, ``val`` or ``test``) of the language with canonical form ``canon``."""
    bucket = int.from_bytes(hashlib.sha256(canon).digest()[:8], "little") % HASH_BUCKETS
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def letters_read(inputs: torch.Tensor, delimiter: int) -> torch.Tensor:
    """(n, L): how many letters of the current string ``inputs[:, :t+1]`` ends with."""
    pos = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    last_delimiter = torch.where(inputs == delimiter, pos, -1).cummax(dim=1).values
    return pos - last_delimiter


def _context_ids(inputs: torch.Tensor, length: int, base: int) -> torch.Tensor:
    """(n, L) integer id of the last ``length`` tokens at every position (``base - 1``: before the start)."""
    ids = torch.zeros_like(inputs)
    for back in range(length):
        token = F.pad(inputs, (back, 0), value=base - 1)[:, :inputs.shape[1]]
        ids = ids * base + token
    return ids


def _earlier_counts(key: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
    """``counts[i] = sum(following[j] for j < i if key[j] == key[i])``, for ``key`` (M,) and ``following`` (M, K).

    A stable sort groups equal keys and keeps each group in its original order; exclusive
    prefix sums within each group give the counts.
    """
    order = torch.sort(key, stable=True).indices
    f = following[order]
    before = f.cumsum(dim=0) - f
    sorted_key = key[order]
    first = torch.ones_like(sorted_key, dtype=torch.bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    idx = torch.arange(key.numel(), device=key.device)
    group_start = torch.where(first, idx, 0).cummax(dim=0).values
    counts = torch.empty_like(before)
    counts[order] = before - before[group_start]
    return counts


def in_context_ngrams(inputs: torch.Tensor, targets: torch.Tensor, orders, num_symbols: int) -> dict:
    """``{order: (M, num_symbols)}``: next-token distributions of in-context n-gram models with
    back-off at the M scored positions (``targets != -100``, in row-major order).

    At position ``t`` a model has read ``inputs[:, :t+1]`` and knows the next token of every
    earlier scored position ``j < t`` of the same row (``targets[:, j] = inputs[:, j+1]``). The
    ``order``-gram model predicts the frequencies of the tokens that followed earlier
    occurrences of the last ``order - 1`` tokens; where that context never occurred it backs off
    to one token less, down to the frequencies of all earlier next tokens, and to the uniform
    distribution at a row's first position. Scored targets must lie in ``[0, num_symbols)``.
    """
    scored = targets != IGNORE_INDEX
    row = torch.arange(inputs.shape[0], device=inputs.device)[:, None].expand_as(inputs)[scored]
    following = F.one_hot(targets[scored], num_symbols).float()
    base = int(inputs.max()) + 2
    counts = [_earlier_counts(row * base ** length + _context_ids(inputs, length, base)[scored], following)
              for length in range(max(orders))]
    out = {}
    for order in orders:
        probs = torch.full_like(following, 1.0 / num_symbols)
        resolved = torch.zeros_like(following[:, :1], dtype=torch.bool)
        for length in range(order - 1, -1, -1):
            total = counts[length].sum(dim=-1, keepdim=True)
            use = (total > 0) & ~resolved
            probs = torch.where(use, counts[length] / total.clamp(min=1), probs)
            resolved |= use
        out[order] = probs
    return out


@register("dfa")
class DFA(TokenTask):
    """RegBench: strings of a random PFA, to be continued in context (see the module docstring)."""

    selection_metric = "dfa_accuracy"

    def __init__(self, num_letters: int = 18, min_alphabet: int = 4, max_alphabet: int = 18,
                 min_states: int = 4, max_states: int = 12, min_edges: int = 1, max_edges: int = 3,
                 min_strings: int = 10, max_strings: int = 19, min_length: int = 1, max_length: int = 49,
                 num_train_automata: int | None = None):
        self.num_letters = check_int("num_letters", num_letters, low=2)
        self.min_alphabet = check_int("min_alphabet", min_alphabet, low=1, high=num_letters)
        self.max_alphabet = check_int("max_alphabet", max_alphabet, low=min_alphabet, high=num_letters)
        self.min_states = check_int("min_states", min_states, low=2, high=255)
        self.max_states = check_int("max_states", max_states, low=min_states, high=255)
        self.min_edges = check_int("min_edges", min_edges, low=1)
        self.max_edges = check_int("max_edges", max_edges, low=min_edges)
        if max_edges > min_alphabet:
            raise ConfigError(f"max_edges={max_edges} needs alphabets of at least max_edges letters (a state's "
                              f"edges have distinct letters); got min_alphabet={min_alphabet}")
        self.min_strings = check_int("min_strings", min_strings, low=1)
        self.max_strings = check_int("max_strings", max_strings, low=min_strings)
        self.min_length = check_int("min_length", min_length, low=1)
        self.max_length = check_int("max_length", max_length, low=min_length)
        if num_train_automata is not None:
            check_int("num_train_automata", num_train_automata, low=1)
        self.num_train_automata = num_train_automata
        self.delimiter = num_letters
        self.pad = num_letters + 1
        self.vocab_size = num_letters + 2
        self.seq_len = max_strings * (max_length + 1)
        self._split: str | None = None
        self._pool: torch.Tensor | None = None

    def random_guess_accuracy(self) -> float:
        return 1.0 / (self.num_letters + 1)

    # -- automata ---------------------------------------------------------------------------

    def draw_automaton(self, rng: random.Random, split: str | None = None) -> Edges:
        """A random minimal trimmed DFA, canonically numbered; a language of ``split`` when given."""
        for _ in range(MAX_DRAWS):
            n = rng.randint(self.min_states, self.max_states)
            alphabet = rng.sample(range(self.num_letters), rng.randint(self.min_alphabet, self.max_alphabet))
            edges = []
            for s in range(n):
                letters = rng.sample(alphabet, rng.randint(self.min_edges, self.max_edges))
                others = [rng.randrange(n - 1) for _ in letters]
                edges.append({a: t + (t >= s) for a, t in zip(letters, others)})
            dfa = minimise(edges)
            if len(dfa) < self.min_states or any(s in out.values() for s, out in enumerate(dfa)):
                continue
            if split is not None and language_split(canonical_form(dfa, self.num_letters)) != split:
                continue
            return dfa
        raise ConfigError(f"no automaton found in {MAX_DRAWS} draws: minimal automata with at least "
                          f"min_states={self.min_states} states and no self-loop are too rare with "
                          f"max_states={self.max_states}, max_edges={self.max_edges}")

    def transition_tables(self, automata: list) -> torch.Tensor:
        """(len(automata), max_states, num_letters) LongTensor: the next state, or -1 for no edge."""
        A, Q = self.num_letters, self.max_states
        index, target = [], []
        for i, dfa in enumerate(automata):
            for s, out in enumerate(dfa):
                for a, t in out.items():
                    index.append((i * Q + s) * A + a)
                    target.append(t)
        table = torch.full((len(automata) * Q * A,), -1, dtype=torch.long)
        table[torch.tensor(index, dtype=torch.long)] = torch.tensor(target, dtype=torch.long)
        return table.reshape(len(automata), Q, A)

    def _train_pool(self, size: int, seed: int) -> torch.Tensor:
        """Transition tables of ``size`` distinct training languages, drawn in a seeded order."""
        rng = random.Random(seed)
        seen: set = set()
        pool, repeats = [], 0
        while len(pool) < size:
            dfa = self.draw_automaton(rng, "train")
            canon = canonical_form(dfa, self.num_letters)
            if canon in seen:
                repeats += 1
                if repeats > max(1000, size):
                    raise ConfigError(f"num_train_automata={size} is more than this task's training languages "
                                      f"can provide: {len(pool)} distinct ones found; lower it or enlarge the automata")
                continue
            seen.add(canon)
            pool.append(dfa)
        return self.transition_tables(pool)

    def split_view(self, split: str, seed: int) -> "DFA":
        """The task drawing only languages of ``split``; the training view draws from its pool, if any."""
        check_choice("split", split, SPLITS)
        view = copy.copy(self)
        view._split = split
        view._pool = None
        if split == "train" and self.num_train_automata is not None:
            view._pool = self._train_pool(self.num_train_automata, derive_seed(seed, self.name, "train automata"))
        return view

    # -- sampling ---------------------------------------------------------------------------

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        """``inputs``, ``targets``, ``transitions`` (n, max_states, num_letters), ``states`` (the
        automaton's state after each input token, -1 at pads), ``delimiter`` and ``pad`` ids."""
        n = check_n(n)
        g = generator(seed, device)
        if self._pool is not None:
            pool = self._pool.to(device)
            size = pool.shape[0]
            perm = torch.randperm(size, generator=g, device=device)
            start = torch.randint(0, size, (1,), generator=g, device=device)
            transitions = pool[perm[(start + torch.arange(n, device=device)) % size]]
        else:
            automata = [self.draw_automaton(random.Random(derive_seed(seed, "automaton", i)), self._split)
                        for i in range(n)]
            transitions = self.transition_tables(automata).to(device)
        return self._strings(transitions, g)

    def _strings(self, transitions: torch.Tensor, g: torch.Generator) -> dict:
        """Strings of the PFAs ``transitions``, laid out as language-model inputs and targets."""
        n, Q, A = transitions.shape
        device = transitions.device
        K, Lmax, L, E = self.max_strings, self.max_length, self.seq_len, self.max_edges
        # Slot (i * Q + s) * E + c is the c-th outgoing edge (in letter order) of state s of automaton i.
        has_edge = transitions >= 0
        degree = has_edge.sum(dim=-1, keepdim=True).expand(n, Q, E).reshape(-1)
        slot_letter = torch.where(has_edge, torch.arange(A, device=device), A).sort(dim=-1).values[..., :E]
        slot_state = transitions.gather(2, slot_letter.clamp(max=A - 1))
        slot_next = ((torch.arange(n, device=device)[:, None, None] * Q + slot_state) * E).reshape(-1)
        slot_letter, slot_state = slot_letter.reshape(-1), slot_state.reshape(-1)

        # All n * K walks advance together, one letter per step (time-major for contiguous steps).
        # The edge taken is floor(u * degree): u < 1 in float32 keeps it below the degree.
        u = torch.rand(Lmax, n, K, generator=g, device=device)
        tokens = torch.full((Lmax + 1, n, K), self.delimiter, dtype=torch.long, device=device)
        states = torch.zeros(Lmax + 1, n, K, dtype=torch.long, device=device)
        at = (torch.arange(n, device=device)[:, None] * (Q * E)).expand(n, K).contiguous()
        for step in range(Lmax):
            slot = at + (u[step] * degree[at]).long()
            tokens[step + 1] = slot_letter[slot]
            states[step + 1] = slot_state[slot]
            at = slot_next[slot]

        lengths = torch.randint(self.min_length, Lmax + 1, (n, K), generator=g, device=device)
        count = torch.randint(self.min_strings, K + 1, (n, 1), generator=g, device=device)
        used = torch.arange(K, device=device) < count
        span = (lengths + 1) * used  # a delimiter, then the string
        offset = span.cumsum(dim=1) - span
        end = span.sum(dim=1)  # where the final delimiter goes
        col = torch.arange(Lmax + 1, device=device)[:, None, None]
        keep = used & (col <= lengths)
        # Position L + 1 is a discard slot for the parts of the (Lmax + 1, n, K) blocks not kept.
        pos = torch.where(keep, offset + col, L + 1).permute(1, 0, 2).reshape(n, -1)
        stream = torch.full((n, L + 2), self.pad, dtype=torch.long, device=device)
        stream.scatter_(1, pos, tokens.permute(1, 0, 2).reshape(n, -1))
        state_stream = torch.full((n, L + 2), -1, dtype=torch.long, device=device)
        state_stream.scatter_(1, pos, states.permute(1, 0, 2).reshape(n, -1))

        inputs = stream[:, :L].contiguous()
        targets = stream[:, 1:L + 1].clone()
        targets[torch.arange(n, device=device), end - 1] = self.delimiter
        targets[targets == self.pad] = IGNORE_INDEX
        return {"inputs": inputs, "targets": targets, "transitions": transitions,
                "states": state_stream[:, :L].contiguous(), "delimiter": self.delimiter, "pad": self.pad}

    # -- metrics ----------------------------------------------------------------------------

    def _outgoing(self, batch: dict) -> torch.Tensor:
        """(n, L, num_letters) bool: the letters with an edge out of the current state."""
        states, transitions = batch["states"], batch["transitions"]
        rows = states.clamp(min=0)[..., None].expand(-1, -1, self.num_letters)
        return (transitions.gather(1, rows) >= 0) & (states >= 0)[..., None]

    def valid_next(self, batch: dict) -> torch.Tensor:
        """(n, L, num_letters + 1) bool: the valid next symbols (outgoing letters; the delimiter)."""
        outgoing = self._outgoing(batch)
        return torch.cat([outgoing, (batch["states"] >= 0)[..., None]], dim=-1)

    def next_symbol_distribution(self, batch: dict) -> torch.Tensor:
        """(n, L, num_letters + 1): the true distribution of the next symbol (letters, then the
        delimiter) after every input position; zeros at pads."""
        outgoing = self._outgoing(batch)
        j = letters_read(batch["inputs"], self.delimiter)
        end = torch.where(j >= self.min_length, 1.0 / (self.max_length - j + 1).clamp(min=1), 0.0)
        end = end * (batch["states"] >= 0)
        degree = outgoing.sum(dim=-1, keepdim=True).clamp(min=1)
        return torch.cat([outgoing * ((1 - end)[..., None] / degree), end[..., None]], dim=-1)

    def eval_stats(self, batch: dict, mask: torch.Tensor = None, logits: torch.Tensor = None, **outputs) -> dict:
        S = self.num_letters + 1
        p = self.next_symbol_distribution(batch)[mask]
        valid = self.valid_next(batch)[mask]
        count = torch.tensor(float(p.shape[0]), device=p.device)

        def scores(q: torch.Tensor, greedy: torch.Tensor, prefix: str) -> dict:
            ok = F.pad(valid, (0, 1)).gather(1, greedy[:, None]).squeeze(1)
            tvd = 0.5 * (q - p).abs().sum(dim=-1)
            return {f"{prefix}dfa_accuracy": (ok.sum().float(), count), f"{prefix}tvd": (tvd.sum(), count)}

        logits = logits.float()
        stats = scores(logits[:, :S].softmax(dim=-1), logits.argmax(dim=-1), "")
        ngrams = in_context_ngrams(batch["inputs"], batch["targets"], (2, 3), S)
        for order, q in ngrams.items():
            stats.update(scores(q, q.argmax(dim=-1), f"ngram{order}_"))
        return stats
