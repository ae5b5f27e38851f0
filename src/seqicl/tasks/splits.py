"""Batches as dicts of tensors, content hashes, and leakage-free train/val/test splits."""

from __future__ import annotations

import torch

from seqicl.errors import ConfigError
from seqicl.seeding import derive_seed, generator
from seqicl.tasks.base import Task

_HASH_LEN = 1 << 16
_hash_cache: dict = {}


def batch_size_of(batch: dict) -> int:
    return next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0)


def index_batch(batch: dict, idx) -> dict:
    """Select examples ``idx`` of every per-example tensor; metadata passes through."""
    return {k: (v[idx] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in batch.items()}


def concat_batches(batches: list[dict]) -> dict:
    first = batches[0]
    return {k: (torch.cat([b[k] for b in batches]) if torch.is_tensor(v) and v.dim() > 0 else v)
            for k, v in first.items()}


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` items: shares differ by at most one item,
    never overlap, and together cover ``range(n)`` in order."""
    return slice(rank * n // world, (rank + 1) * n // world)


def batch_to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def pin_memory(batch: dict) -> dict:
    """The batch with its tensors in page-locked memory (asynchronous copies to a GPU)."""
    return {k: (v.pin_memory() if torch.is_tensor(v) else v) for k, v in batch.items()}


def example_hashes(batch: dict) -> torch.Tensor | None:
    """A 64-bit content hash per example over all its integer tensors (None for float-only tasks).

    A random linear form over the flattened tokens, wrapping modulo 2^64: distinct examples
    collide with probability about 2^-64, and a collision only ever drops an example.
    """
    parts = [v.reshape(v.shape[0], -1).long() for _, v in sorted(batch.items())
             if torch.is_tensor(v) and v.dim() > 0 and not v.is_floating_point()]
    if not parts:
        return None
    flat = torch.cat(parts, dim=1)
    width = flat.shape[1]
    device = flat.device
    key = (width, str(device))
    if key not in _hash_cache:
        g = generator(0x5EED, "cpu")
        coeffs = torch.randint(-(1 << 61), 1 << 61, (width,), generator=g) * 2 + 1
        _hash_cache[key] = coeffs.to(device)
    return ((flat + 3) * _hash_cache[key]).sum(dim=1)


def _first_unique(h: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of each distinct value of ``h``, in order."""
    uniq, inverse = torch.unique(h, return_inverse=True)
    first = torch.full((uniq.numel(),), h.numel(), dtype=torch.long, device=h.device)
    first.scatter_reduce_(0, inverse, torch.arange(h.numel(), device=h.device), reduce="amin")
    return first.sort().values


def draw_unique(task: Task, size: int, seed: int, exclude: torch.Tensor | None = None,
                max_rounds: int = 30) -> tuple[dict, torch.Tensor | None]:
    """``size`` distinct examples of ``task`` none of whose hashes is in ``exclude``."""
    if size <= 0:
        raise ConfigError(f"split sizes must be positive, got {size}")
    if not task.finite_support:
        batch = task.sample(size, seed=seed)
        return batch, None
    kept: list[dict] = []
    kept_hashes = torch.empty(0, dtype=torch.long)
    have = 0
    for r in range(max_rounds):
        want = size - have
        draw = task.sample(max(int(want * 1.1) + 16, 64) if r else max(int(size * 1.02) + 8, 16),
                           seed=derive_seed(seed, "round", r))
        h = example_hashes(draw)
        seen = kept_hashes if exclude is None else torch.cat([exclude, kept_hashes])
        idx = _first_unique(h)
        idx = idx[~torch.isin(h[idx], seen)][:want]
        if idx.numel():
            kept.append(index_batch(draw, idx))
            kept_hashes = torch.cat([kept_hashes, h[idx]])
            have += idx.numel()
        if have >= size:
            return concat_batches(kept), kept_hashes
    raise ConfigError(
        f"task {task.name!r} with {task.params()} has too few distinct examples: found {have} new "
        f"ones of the {size} asked for; ask for fewer examples or make the task larger")


def split_seed(task: Task, split: str, seed: int) -> int:
    """The seed split ``split`` of a run with seed ``seed`` is drawn with."""
    return derive_seed(seed, task.name, split)


def rebuild_test_set(task: Task, test_size: int, seed: int) -> dict:
    """The test set of a run with seed ``seed``: it is drawn first, with nothing to exclude, so
    ``(task, test_size, seed)`` determine it."""
    return draw_unique(task.split_view("test", seed), test_size, split_seed(task, "test", seed))[0]


def make_splits(task: Task, train_size: int, val_size: int, test_size: int, seed: int = 0) -> dict:
    """``{"train", "val", "test"}`` batches with no example shared between splits.

    The test set is drawn first, then validation, then training, each excluding what came
    before; so the test set depends only on ``(task, test_size, seed)``. Each split is drawn
    from ``task.split_view(split, seed)``. Tasks without finite support (continuous prompts) are
    drawn without de-duplication: a repeat has probability 0.
    """
    out: dict = {}
    seen = torch.empty(0, dtype=torch.long)
    for split, size in (("test", test_size), ("val", val_size), ("train", train_size)):
        view = task.split_view(split, seed)
        batch, h = draw_unique(view, size, split_seed(task, split, seed), exclude=seen)
        out[split] = batch
        if h is not None:
            seen = torch.cat([seen, h])
    if task.finite_support:
        assert_disjoint(out)
    return {k: out[k] for k in ("train", "val", "test")}


def assert_disjoint(splits: dict) -> None:
    """Raise if any example occurs in two splits (finite-support tasks; a cheap hash check)."""
    hashes = {k: example_hashes(v) for k, v in splits.items()}
    names = [k for k, h in hashes.items() if h is not None]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = int(torch.isin(hashes[a], hashes[b]).sum())
            if shared:
                raise AssertionError(f"{shared} examples are shared between the {a} and {b} splits")
