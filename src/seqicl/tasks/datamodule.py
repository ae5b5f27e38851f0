"""One LightningDataModule that serves any task, from fixed splits or an online stream.

Training batches come from a resumable iterable: its position (epoch, batch) is saved in
checkpoints, so a resumed run sees exactly the batches an uninterrupted run would have seen.
Fixed datasets are shuffled by a permutation seeded from (seed, epoch); an online stream draws
batch ``(epoch, i)`` with a seed derived from it and drops any example that is also in the
validation or test set. A task with a curriculum is also given the training step of the batch,
``epoch * steps_per_epoch + i``, so the schedule too resumes where it stopped.

In a data-parallel run ``batch_size`` is the global batch: every step still uses the batch a
single process would use, split in equal consecutive shares over the ranks. The online stream
draws the whole global batch on every rank (same seed) and each rank keeps its share; a fixed
set's epoch permutation is the same on every rank, which takes its share of each batch. The
validation and test splits are divided into contiguous shares; the module sums statistics
over all ranks, so metrics cover every example of the split exactly once.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import lightning.pytorch as pl
import torch

from seqicl.errors import ConfigError
from seqicl.seeding import derive_seed, generator
from seqicl.tasks.base import SPLITS, Task
from seqicl.tasks.splits import (assert_disjoint, batch_size_of, batch_to, concat_batches, draw_unique,
                                 example_hashes, index_batch, pin_memory, rank_slice, split_seed)


def check_world_size(batch_size: int, val_size: int, test_size: int, world: int) -> None:
    """A data-parallel run splits every global batch evenly and gives every rank evaluation examples."""
    if batch_size % world:
        raise ConfigError(f"data.batch_size={batch_size} is the global batch, split evenly over {world} processes: "
                          f"make it a multiple of {world}")
    for name, size in (("val_size", val_size), ("test_size", test_size)):
        if size < world:
            raise ConfigError(f"data.{name}={size} is smaller than the {world} processes that share it")


class TrainBatches:
    """A resumable iterable of training batches (implements ``state_dict``/``load_state_dict``).

    ``batch_size`` is the global batch; rank ``rank`` of ``world`` serves its consecutive share of
    ``batch_size // world`` examples of each one.
    """

    def __init__(self, task: Task, batch_size: int, seed: int, data: dict | None = None,
                 steps_per_epoch: int = 1000, exclude: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", rank: int = 0, world: int = 1):
        self.task, self.batch_size, self.seed = task, batch_size, seed
        self.data, self.exclude, self.device = data, exclude, torch.device(device)
        self.share = rank_slice(batch_size, rank, world)
        if data is not None:
            n = batch_size_of(data)
            if n < batch_size:
                raise ConfigError(f"data.train_size={n} is smaller than data.batch_size={batch_size}")
            self.length = n // batch_size
        else:
            self.length = steps_per_epoch
        self.epoch, self.pos = 0, 0
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if self.pos >= self.length:
            self.epoch, self.pos = self.epoch + 1, 0
        return self

    def __next__(self) -> dict:
        if self.pos >= self.length:
            raise StopIteration
        batch = self.batch(self.epoch, self.pos)
        self.pos += 1
        return batch

    def batch(self, epoch: int, i: int) -> dict:
        """This rank's share of global batch ``i`` of ``epoch``."""
        bs = self.batch_size
        if self.data is not None:
            if self._perm_epoch != epoch:
                n = batch_size_of(self.data)
                perm = torch.randperm(n, generator=generator(derive_seed(self.seed, "epoch", epoch)))
                self._perm, self._perm_epoch = perm.to(self._data_device()), epoch
            return index_batch(self.data, self._perm[i * bs:(i + 1) * bs][self.share])
        batch = self._fresh(derive_seed(self.seed, "stream", epoch, i), epoch * self.length + i)
        return batch if self.share == slice(0, bs) else index_batch(batch, self.share)

    def _data_device(self):
        return next(v.device for v in self.data.values() if torch.is_tensor(v))

    def _fresh(self, seed: int, step: int) -> dict:
        at_step = {} if self.task.curriculum is None else {"step": step}
        batch = self.task.sample(self.batch_size, seed=seed, device=self.device, **at_step)
        if self.exclude is None:
            return batch
        clash = torch.isin(example_hashes(batch), self.exclude)
        if not bool(clash.any()):
            return batch
        parts, have, r = [index_batch(batch, ~clash)], int((~clash).sum()), 0
        while have < self.batch_size:
            r += 1
            extra = self.task.sample(self.batch_size, seed=derive_seed(seed, "top-up", r), device=self.device,
                                     **at_step)
            extra = index_batch(extra, ~torch.isin(example_hashes(extra), self.exclude))
            parts.append(extra)
            have += batch_size_of(extra)
        return index_batch(concat_batches(parts), slice(0, self.batch_size))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class Prefetched:
    """Serves a ``TrainBatches`` stream one batch ahead.

    While the accelerator trains on batch i, a background thread draws batch i + 1 on the CPU
    into pinned memory (``pin``), so that its copy to the device is asynchronous. The batches, their
    order and the resumable position (``state_dict``: the batches handed out) are the wrapped
    stream's.
    """

    def __init__(self, batches: TrainBatches, pin: bool = True):
        self.batches, self.pin = batches, pin
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqicl-prefetch")
        self._ahead: tuple[tuple[int, int], Future] | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        iter(self.batches)
        return self

    def _submit(self, epoch: int, i: int) -> Future:
        def draw():
            batch = self.batches.batch(epoch, i)
            return pin_memory(batch) if self.pin else batch

        return self._pool.submit(draw)

    def __next__(self) -> dict:
        b = self.batches
        if b.pos >= b.length:
            raise StopIteration
        key = (b.epoch, b.pos)
        future = self._ahead[1] if self._ahead is not None and self._ahead[0] == key else self._submit(*key)
        b.pos += 1
        self._ahead = ((b.epoch, b.pos), self._submit(b.epoch, b.pos)) if b.pos < b.length else None
        return future.result()

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)
        self._ahead = None


class EvalBatches:
    """Consecutive slices of a fixed split (one iterable, so Lightning sees one dataloader)."""

    def __init__(self, data: dict, batch_size: int):
        self.data, self.batch_size, self.n = data, batch_size, batch_size_of(data)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        for i in range(0, self.n, self.batch_size):
            yield index_batch(self.data, slice(i, i + self.batch_size))


class TaskDataModule(pl.LightningDataModule):
    """Train / validation / test data for any task.

    ``train_size=None`` streams fresh training examples (never one of the validation or test
    examples); an integer draws a fixed training set, disjoint from validation and test.
    Each split draws from ``task.split_view(split, seed)``. Evaluation batches are fixed and carry
    the task's ``eval_extras`` (e.g. baseline predictions), computed once. Fixed sets are generated
    on the CPU and live on the training device when ``on_device``. The online stream is generated
    on the CPU (the same data on every machine) unless ``generate_on_device`` (faster on a GPU, but
    its RNG differs from the CPU's). A task with a curriculum needs the online stream: a fixed
    training set has one size.
    """

    def __init__(self, task: Task, batch_size: int = 64, train_size: int | None = None,
                 val_size: int = 500, test_size: int = 1000, eval_batch_size: int | None = None,
                 steps_per_epoch: int = 1000, on_device: bool = True, generate_on_device: bool = False,
                 seed: int = 0):
        super().__init__()
        for name, v in (("batch_size", batch_size), ("val_size", val_size), ("test_size", test_size),
                        ("steps_per_epoch", steps_per_epoch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"data.{name} must be a positive integer, got {v!r}")
        if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int)
                                       or train_size < 1):
            raise ConfigError(f"data.train_size must be a positive integer or null (online), got {train_size!r}")
        if train_size is not None and task.curriculum is not None:
            raise ConfigError(f"task {task.name!r} has a curriculum, which needs freshly drawn training prompts: "
                              "set data.train_size: null, or task.curriculum: null for a fixed training set")
        self.task, self.batch_size, self.train_size = task, batch_size, train_size
        self.val_size, self.test_size = val_size, test_size
        self.eval_batch_size = eval_batch_size or max(batch_size, 256)
        self.steps_per_epoch, self.on_device, self.seed = steps_per_epoch, on_device, seed
        self.generate_on_device = generate_on_device
        self.splits: dict | None = None
        self.train_batches: TrainBatches | None = None

    def _device(self) -> torch.device:
        if self.on_device and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        views = {split: self.task.split_view(split, self.seed) for split in SPLITS}
        seen = torch.empty(0, dtype=torch.long)
        splits = {}
        sizes = (("test", self.test_size), ("val", self.val_size), ("train", self.train_size))
        for split, size in sizes:
            if size is None:
                continue
            batch, h = draw_unique(views[split], size, split_seed(self.task, split, self.seed), exclude=seen)
            splits[split] = batch
            if h is not None:
                seen = torch.cat([seen, h])
        if self.task.finite_support:
            assert_disjoint(splits)
        for split in ("val", "test"):
            splits[split] = {**splits[split], **self.task.eval_extras(splits[split])}
        device = self._device()
        self.splits = {k: batch_to(v, device) for k, v in splits.items()}
        stream_device = device if self.generate_on_device else torch.device("cpu")
        exclude = seen.to(stream_device) if self.task.finite_support else None
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        check_world_size(self.batch_size, self.val_size, self.test_size, world)
        self.eval_shares = {split: rank_slice(batch_size_of(self.splits[split]), rank, world)
                            for split in ("val", "test")}
        self.train_batches = TrainBatches(views["train"], self.batch_size, derive_seed(self.seed, "train"),
                                          data=self.splits.get("train"), steps_per_epoch=self.steps_per_epoch,
                                          exclude=exclude, device=stream_device, rank=rank, world=world)

    def train_dataloader(self):
        stream = self.train_batches
        if stream.data is None and stream.device.type == "cpu" and self._device().type == "cuda":
            return Prefetched(stream)
        return stream

    def _eval_batches(self, split: str) -> "EvalBatches":
        """This rank's share of the split (all of it in a single process)."""
        return EvalBatches(index_batch(self.splits[split], self.eval_shares[split]), self.eval_batch_size)

    def val_dataloader(self):
        return self._eval_batches("val")

    def test_dataloader(self):
        return self._eval_batches("test")

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch_to(batch, device)

