"""Task base classes, the task registry and the shared sampling helpers."""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Type

import torch

from seqicl.errors import ConfigError

IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")

_REGISTRY: Dict[str, Type["Task"]] = {}


def register(name: str) -> Callable[[Type["Task"]], Type["Task"]]:
    """Class decorator: register a task under ``name``."""

    def deco(cls: Type["Task"]) -> Type["Task"]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"task name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Sorted names of the registered tasks."""
    return sorted(_REGISTRY)


def task_class(name: str) -> Type["Task"]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; registered tasks: {', '.join(available())}")
    return _REGISTRY[name]


def parameters(name: str) -> dict:
    """The constructor parameters of task ``name`` with their defaults."""
    sig = inspect.signature(task_class(name).__init__)
    return {p.name: p.default for p in list(sig.parameters.values())[1:]}


def build(name: str, **params) -> "Task":
    """Build task ``name``; an unknown name or parameter, or a bad value, raises ValueError."""
    cls = task_class(name)
    valid = parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"task {name!r} has no parameter {unknown[0]!r}; its parameters: {', '.join(valid)}"
        )
    try:
        return cls(**params)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"task {name!r}: {e}") from None


class Task:
    """A seeded, vectorised generator of examples.

    ``sample(n, seed)`` returns a dict of tensors whose first dimension is the example index
    (plain Python values in the dict are metadata shared by the batch). The same
    ``(n, seed, parameters)`` always gives the same batch.
    """

    name: str = ""
    kind: str = "token"  # "token" or "continuous"
    objective: str = ""  # the name of a training objective (seqicl.training.objectives)
    backbone: str = "token_lm"  # the backbone that serves this task when model.backbone is auto
    finite_support: bool = True  # whether identical examples can recur (de-duplication matters)
    selection_metric: str = "accuracy"  # the validation metric that picks the best checkpoint
    selection_mode: str = "max"  # "max" or "min": which way selection_metric improves
    # A task whose training data change with the training step (a curriculum) sets this to an
    # object with ``at(step)``; its ``sample`` then accepts ``step=`` (None: the full-size task).
    curriculum = None

    def sample(self, n: int, seed: int = 0, device: str | torch.device = "cpu") -> dict:
        raise NotImplementedError

    def split_view(self, split: str, seed: int) -> "Task":
        """The task restricted to what split ``split`` (``train``, ``val`` or ``test``) may hold.

        Data for a split are drawn from ``task.split_view(split, seed)``, with ``seed`` the run's
        seed. A task whose examples share a hidden object that must not cross splits (an
        automaton, a function) returns a view that only draws that split's objects; the default
        is the task itself, since example-level de-duplication by content hash already keeps
        the splits disjoint.
        """
        check_choice("split", split, SPLITS)
        return self

    def eval_extras(self, batch: dict) -> dict:
        """Per-example tensors that do not depend on the model (e.g. baseline predictions).

        Computed once for each evaluation split and added to it, so that ``eval_stats`` need
        not recompute them at every validation.
        """
        return {}

    def eval_stats(self, batch: dict, **outputs) -> dict:
        """Task-specific evaluation statistics: ``{name: (sum, count)}`` (tensors, scalar or vector).

        Called on validation and test batches with the objective's outputs (for token tasks:
        ``mask`` of scored positions and the ``logits`` at them). The metric reported is
        sum / count over the whole split.
        """
        return {}

    def params(self) -> dict:
        """The constructor arguments this task was built with."""
        return {k: getattr(self, k) for k in parameters(self.name)}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"


class TokenTask(Task):
    """Token-sequence tasks: ``inputs`` and ``targets`` LongTensors of shape (n, seq_len).

    ``targets[:, t]`` is what the model must output after reading ``inputs[:, :t+1]``;
    ``-100`` marks positions that are not scored. A task that trains on other targets than it
    is evaluated on also returns ``loss_targets``.
    """

    kind = "token"
    objective = "cross_entropy"
    vocab_size: int
    seq_len: int

    def random_guess_accuracy(self) -> float:
        """Accuracy of guessing uniformly among the answers a scored position can have."""
        raise NotImplementedError


class ContinuousTask(Task):
    """Prompts of ``n_points`` (x, y) pairs: ``xs`` FloatTensor (n, n_points, n_dims) and
    ``ys`` FloatTensor (n, n_points); the model predicts ``ys[:, k]`` from ``xs[:, :k+1]`` and
    ``ys[:, :k]``. ``mask`` (n, n_points) marks the points that are scored (a curriculum pads
    smaller prompts to the full size). Tensors describing the sampled function (``w``, ...)
    ride along so that the data can be checked.
    """

    kind = "continuous"
    backbone = "continuous"
    finite_support = False
    n_dims: int
    n_points: int

    @property
    def seq_len(self) -> int:
        """The backbone's sequence length: x and y of every point interleaved."""
        return 2 * self.n_points


# ---------------------------------------------------------------------------------------------
# parameter validation


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value}")
    return value


def check_float(name: str, value, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if value != value:
        raise ConfigError(f"{name} must be a number, got nan")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def check_n(n) -> int:
    return check_int("n", n, low=1)


# ---------------------------------------------------------------------------------------------
# vectorised sampling helpers


def sample_distinct(n: int, k: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) integers from [low, high), distinct within each row, in uniformly random order."""
    size = high - low
    if k > size:
        raise ValueError(f"cannot draw {k} distinct values from a range of {size}")
    device = gen.device
    if 4 * k * k > size:
        perm = torch.rand(n, size, generator=gen, device=device).argsort(dim=1)[:, :k]
        return perm + low
    # Rejection: iid draws conditioned on being distinct are uniform over ordered k-subsets.
    out = torch.randint(low, high, (n, k), generator=gen, device=device)
    bad = _rows_with_duplicates(out)
    while bool(bad.any()):
        idx = bad.nonzero().squeeze(1)
        out[idx] = torch.randint(low, high, (idx.numel(), k), generator=gen, device=device)
        bad = torch.zeros_like(bad)
        bad[idx] = _rows_with_duplicates(out[idx])
    return out


def _rows_with_duplicates(x: torch.Tensor) -> torch.Tensor:
    s = x.sort(dim=1).values
    return (s[:, 1:] == s[:, :-1]).any(dim=1)


def sample_excluding(excluded: torch.Tensor, high: int, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    """Uniform integers from [0, high) minus each row's ``excluded`` values (distinct per row).

    ``excluded`` is (n, m); the result is (n, *shape).
    """
    n, m = excluded.shape
    r = torch.randint(0, high - m, (n, *shape), generator=gen, device=gen.device)
    # Map r to the r-th allowed value: shift past every excluded value at or below it.
    ex = excluded.sort(dim=1).values - torch.arange(m, device=excluded.device)
    shift = torch.searchsorted(ex, r.reshape(n, -1), right=True).reshape(r.shape)
    return r + shift


def gumbel_topk(logits: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k indices per row sampled without replacement with probabilities softmax(logits)."""
    u = torch.rand(logits.shape, generator=gen, device=gen.device).clamp_(1e-20, 1.0)
    return (logits - torch.log(-torch.log(u))).topk(k, dim=-1).indices


def shuffle_rows(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each row of ``x`` (n, k, ...) permuted independently and uniformly along dimension 1."""
    perm = torch.rand(x.shape[:2], generator=gen, device=gen.device).argsort(dim=1)
    return x.gather(1, perm.view(*perm.shape, *([1] * (x.dim() - 2))).expand_as(x))


def first_occurrence(x: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the positions where each row's value of ``x`` (n, k) occurs for the first time."""
    s, idx = x.sort(dim=1, stable=True)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    return torch.zeros_like(first).scatter(1, idx, first)


def pack_units(tokens: torch.Tensor, valid: torch.Tensor, length: int, fill: int = 0,
               *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate variable-length units: the valid slots of ``tokens`` (n, U, W), in order.

    Row i of the result is its units' valid tokens one after the other, cut or filled with
    ``fill`` to ``length``. ``extra`` tensors shaped like ``tokens`` are packed the same way
    (filled with zeros) and returned after the tokens.
    """
    n = tokens.shape[0]
    valid = valid.reshape(n, -1)
    pos = valid.cumsum(dim=1) - 1
    # Dropped slots all go to one extra column, cut off at the end.
    col = torch.where(valid & (pos < length), pos, length)
    out = []
    for t, f in ((tokens, fill), *((e, 0) for e in extra)):
        packed = torch.full((n, length + 1), f, dtype=t.dtype, device=t.device)
        packed.scatter_(1, col, t.reshape(n, -1))
        out.append(packed[:, :length].contiguous())
    return tuple(out)
