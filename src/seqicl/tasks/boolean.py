"""In-context learning of Boolean functions (Bhattamishra et al. 2024, "Understanding in-context
learning in transformers and LLMs by learning to learn discrete functions").

Each prompt draws its own function ``f: {0,1}^n -> {0,1}`` and ``n_points`` inputs; ``ys`` holds
the labels ``f(x)`` as 0.0/1.0 and the model predicts each label from the earlier examples
(binary cross-entropy on logits; accuracy overall and per number of examples). ``encoding``
chooses how a bit is shown to the model: ``zero_one`` (0/1) or ``plus_minus`` (-1/+1, a true
bit is +1). Functions are defined on the bits, so both encodings give the same tasks.

Function classes (a literal is a variable or its negation; the formulas ride along in the
batch as int8 tensors over the variables, +1 for ``x_i``, -1 for ``not x_i``, 0 for absent):

- ``conjunction``: an AND of literals (``literals`` (n, n_dims)); every variable is in it with
  probability ``p_literal``, negated with probability 1/2; at least one literal;
- ``disjunction``: an OR of literals, drawn the same way;
- ``dnf3``: an OR of 3 such conjunctions (``terms`` (n, 3, n_dims)), each with at least 2 literals;
- ``cnf3``: an AND of 3 such disjunctions (``clauses`` (n, 3, n_dims)), each with at least 2 literals;
- ``parity``: the XOR of a subset of the variables (``subset`` (n, n_dims) bool), uniform over
  the non-empty subsets;
- ``sparse_parity``: the XOR of exactly ``sparsity`` variables, a uniformly random set;
- ``majority``: 1 when more than half of a subset's variables are 1; every variable is in the
  subset with probability ``p_subset``, conditioned on an odd size (so there are no ties).

Input distribution. Parity and majority use uniform inputs, whose labels are balanced already
(flipping one variable of its subset flips a parity; flipping every bit flips a majority over an
odd subset). Under uniform inputs a conjunction
of ``k`` literals is true with probability ``2^-k``, so its prompts would be nearly all 0
(a disjunction's nearly all 1; DNFs and CNFs alike). These four classes are therefore sampled
class-balanced: each point's label is 1 with probability 1/2 and, given its label, the input is
uniform over the inputs with that label:

- the rarer label of a DNF (true; a conjunction is a DNF of one term) is drawn exactly: pick a
  term with probability proportional to the number of inputs satisfying it (``2^-k_t``), set
  its literals true and the other bits uniformly, and accept with probability 1 / (number of
  terms the input satisfies), which makes the result uniform over the union;
- the other label is drawn from uniform inputs by rejection; it has probability at least 1/4
  (1/2 for one term) because each term has at least 2 literals (1 for one term);
- a CNF is the negation of the DNF of its negated clauses and is sampled through it.
"""

from __future__ import annotations

import math

import torch

from seqicl.errors import ConfigError
from seqicl.seeding import generator
from seqicl.tasks.base import (ContinuousTask, check_choice, check_float, check_int, check_n,
                               register)

ENCODINGS = ("zero_one", "plus_minus")
MAX_ROUNDS = 10_000


def _rejection(propose, accept, what: str) -> torch.Tensor:
    """Fill ``shape`` with proposals until each entry has one that ``accept`` approves."""
    out, pending = None, None
    for _ in range(MAX_ROUNDS):
        cand = propose()
        ok = accept(cand)
        if out is None:
            out, pending = cand, ~ok
        else:
            take = ok & pending
            out = torch.where(take.view(*take.shape, *[1] * (cand.dim() - take.dim())), cand, out)
            pending = pending & ~take
        if not bool(pending.any()):
            return out
    raise ConfigError(f"could not sample {what} in {MAX_ROUNDS} rounds; the parameters make it too rare")


def draw_literals(n: int, terms: int, n_dims: int, p: float, min_literals: int, g: torch.Generator) -> torch.Tensor:
    """(n, terms, n_dims) int8 in {-1, 0, +1}: each variable in a term with probability ``p``,
    negated with probability 1/2; each term has at least ``min_literals`` literals."""
    dev = g.device
    present = _rejection(lambda: torch.rand(n, terms, n_dims, generator=g, device=dev) < p,
                         lambda m: m.sum(-1) >= min_literals, "terms with enough literals")
    sign = torch.where(torch.rand(n, terms, n_dims, generator=g, device=dev) < 0.5, -1, 1)
    return (present * sign).to(torch.int8)


def satisfied_literals(bits: torch.Tensor, literals: torch.Tensor) -> torch.Tensor:
    """(n, points, terms): how many literals of each term every input satisfies."""
    pos = (literals == 1).to(bits.dtype)
    neg = (literals == -1).to(bits.dtype)
    return (bits @ pos.transpose(1, 2) + (1 - bits) @ neg.transpose(1, 2)).round().long()


def dnf_value(bits: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """(n, points) bool: the OR over terms of the AND of their literals."""
    size = (terms != 0).sum(-1)
    return (satisfied_literals(bits, terms) == size[:, None, :]).any(-1)


def cnf_value(bits: torch.Tensor, clauses: torch.Tensor) -> torch.Tensor:
    """(n, points) bool: the AND over clauses of the OR of their literals."""
    return (satisfied_literals(bits, clauses) >= 1).all(-1)


def _uniform_bits(n: int, points: int, n_dims: int, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, points, n_dims, generator=g, device=g.device) < 0.5).float()


def balanced_dnf_inputs(terms: torch.Tensor, points: int, g: torch.Generator) -> torch.Tensor:
    """(n, points, n_dims) bits, each labelled true by the DNF with probability 1/2 and uniform
    over the inputs with its label (see the module docstring)."""
    n, T, D = terms.shape
    dev = g.device
    size = (terms != 0).sum(-1).float()
    logits = (-math.log(2.0) * size)[:, None, :].expand(n, points, T)

    def propose_true():
        u = torch.rand(n, points, T, generator=g, device=dev).clamp_(1e-20, 1.0)
        chosen = (logits - torch.log(-torch.log(u))).argmax(-1)
        lit = terms.gather(1, chosen[..., None].expand(n, points, D))
        bits = _uniform_bits(n, points, D, g)
        return torch.where(lit == 1, 1.0, torch.where(lit == -1, 0.0, bits))

    def accept_true(bits):
        covering = (satisfied_literals(bits, terms) == size.long()[:, None, :]).sum(-1)
        return torch.rand(n, points, generator=g, device=dev) * covering < 1

    true = _rejection(propose_true, accept_true, "inputs satisfying the formula")
    false = _rejection(lambda: _uniform_bits(n, points, D, g), lambda b: ~dnf_value(b, terms),
                       "inputs falsifying the formula")
    want_true = torch.rand(n, points, generator=g, device=dev) < 0.5
    return torch.where(want_true[..., None], true, false)


class BooleanTask(ContinuousTask):
    """Shared parameters, encoding and sampling of the Boolean tasks."""

    objective = "bce"

    def _init_common(self, n_dims, n_points, encoding) -> None:
        self.n_dims = check_int("n_dims", n_dims, low=1)
        self.n_points = check_int("n_points", n_points, low=1)
        self.encoding = check_choice("encoding", encoding, ENCODINGS)

    def sample(self, n: int, seed: int = 0, device="cpu") -> dict:
        n = check_n(n)
        g = generator(seed, device)
        function = self.draw_function(n, g)
        bits = self.draw_inputs(function, n, g)
        labels = self.evaluate(bits, function)
        xs = bits if self.encoding == "zero_one" else 2 * bits - 1
        mask = torch.ones(n, self.n_points, dtype=torch.bool, device=device)
        return {"xs": xs, "ys": labels.float(), "mask": mask, **function}

    def draw_function(self, n: int, g: torch.Generator) -> dict:
        raise NotImplementedError

    def draw_inputs(self, function: dict, n: int, g: torch.Generator) -> torch.Tensor:
        return _uniform_bits(n, self.n_points, self.n_dims, g)

    def evaluate(self, bits: torch.Tensor, function: dict) -> torch.Tensor:
        raise NotImplementedError


class _FormulaTask(BooleanTask):
    """Conjunctions, disjunctions, DNFs and CNFs, sampled class-balanced."""

    n_terms = 1
    min_literals = 1
    is_cnf = False
    key = "terms"

    def __init__(self, n_dims: int = 28, n_points: int = 70, p_literal: float = 0.3,
                 encoding: str = "zero_one"):
        self._init_common(n_dims, n_points, encoding)
        self.p_literal = check_float("p_literal", p_literal, low=0.0, high=1.0, low_open=True)
        if self.n_dims < self.min_literals:
            raise ConfigError(f"n_dims={n_dims} is too small: {self.name} needs terms of at least "
                              f"{self.min_literals} literals")
        # Terms with fewer than min_literals literals are redrawn: refuse settings where that
        # almost never succeeds, instead of failing later while sampling.
        q = 1.0 - self.p_literal
        too_few = sum(math.comb(self.n_dims, j) * self.p_literal ** j * q ** (self.n_dims - j)
                      for j in range(self.min_literals))
        if 1.0 - too_few < 0.05:
            raise ConfigError(f"p_literal={p_literal} is too small for n_dims={n_dims}: a term gets at least "
                              f"{self.min_literals} literals with probability {1.0 - too_few:.2g}; "
                              f"use p_literal >= {self.min_literals / self.n_dims:.2g} or so")

    def _formula(self, function: dict) -> torch.Tensor:
        f = function[self.key]
        return f[:, None, :] if f.dim() == 2 else f

    def draw_function(self, n, g):
        f = draw_literals(n, self.n_terms, self.n_dims, self.p_literal, self.min_literals, g)
        return {self.key: f[:, 0] if self.key == "literals" else f}

    def draw_inputs(self, function, n, g):
        f = self._formula(function)
        return balanced_dnf_inputs(-f if self.is_cnf else f, self.n_points, g)

    def evaluate(self, bits, function):
        f = self._formula(function)
        return cnf_value(bits, f) if self.is_cnf else dnf_value(bits, f)


@register("conjunction")
class Conjunction(_FormulaTask):
    key = "literals"


@register("disjunction")
class Disjunction(_FormulaTask):
    key = "literals"
    is_cnf = True


@register("dnf3")
class DNF3(_FormulaTask):
    n_terms, min_literals = 3, 2


@register("cnf3")
class CNF3(_FormulaTask):
    n_terms, min_literals, is_cnf, key = 3, 2, True, "clauses"


def _parity(bits: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    return (bits @ subset.to(bits.dtype)[:, :, None])[..., 0].round().long() % 2 == 1


@register("parity")
class Parity(BooleanTask):
    def __init__(self, n_dims: int = 10, n_points: int = 70, encoding: str = "zero_one"):
        self._init_common(n_dims, n_points, encoding)

    def draw_function(self, n, g):
        subset = _rejection(lambda: torch.rand(n, self.n_dims, generator=g, device=g.device) < 0.5,
                            lambda s: s.any(-1), "non-empty subsets")
        return {"subset": subset}

    def evaluate(self, bits, function):
        return _parity(bits, function["subset"])


@register("sparse_parity")
class SparseParity(BooleanTask):
    def __init__(self, n_dims: int = 10, n_points: int = 70, sparsity: int = 2, encoding: str = "zero_one"):
        self._init_common(n_dims, n_points, encoding)
        self.sparsity = check_int("sparsity", sparsity, low=1, high=self.n_dims)

    def draw_function(self, n, g):
        chosen = torch.rand(n, self.n_dims, generator=g, device=g.device).argsort(dim=1)[:, :self.sparsity]
        subset = torch.zeros(n, self.n_dims, dtype=torch.bool, device=g.device)
        subset.scatter_(1, chosen, True)
        return {"subset": subset}

    def evaluate(self, bits, function):
        return _parity(bits, function["subset"])


@register("majority")
class Majority(BooleanTask):
    def __init__(self, n_dims: int = 28, n_points: int = 70, p_subset: float = 0.5, encoding: str = "zero_one"):
        self._init_common(n_dims, n_points, encoding)
        self.p_subset = check_float("p_subset", p_subset, low=0.0, high=1.0, low_open=True)
        if self.p_subset == 1.0 and self.n_dims % 2 == 0:
            raise ConfigError(f"p_subset=1 with an even n_dims={n_dims} never gives an odd subset; "
                              "lower p_subset or make n_dims odd")

    def draw_function(self, n, g):
        subset = _rejection(lambda: torch.rand(n, self.n_dims, generator=g, device=g.device) < self.p_subset,
                            lambda s: s.sum(-1) % 2 == 1, "odd subsets")
        return {"subset": subset}

    def evaluate(self, bits, function):
        subset = function["subset"]
        on = (bits @ subset.to(bits.dtype)[:, :, None])[..., 0]
        return 2 * on > subset.sum(-1, keepdim=True).to(bits.dtype)
