"""Callbacks beyond Lightning's own."""

from __future__ import annotations

import os
import time

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import RichProgressBar


class StopAtAccuracy(pl.Callback):
    """Stop training once a validation metric reaches ``threshold`` (validation data only).

    ``mode="min"`` stops once the metric falls to the threshold or below (e.g. a loss). A run
    whose task does not log the metric (regression has no accuracy) is never stopped by it.
    """

    def __init__(self, threshold: float, monitor: str = "val/accuracy", mode: str = "max"):
        self.threshold, self.monitor, self.mode = threshold, monitor, mode

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        reached = float(value) >= self.threshold if self.mode == "max" else float(value) <= self.threshold
        if reached:
            trainer.should_stop = True


class StepRunProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled for runs bounded by steps rather than epochs.

    A run with ``max_steps`` and no ``max_epochs`` has ``max_epochs=-1``, which the stock bar
    prints as "Epoch 5/-2". This one prints "Epoch 5" there, and "Epoch 5/9" where epochs bound it.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        description = f"Epoch {current_epoch}"
        if max_epochs is not None and max_epochs > 0:
            description += f"/{max_epochs - 1}"
        return f"{description:{len(self.validation_description)}}"


class Throughput(pl.Callback):
    """Training steps per second after the first ``skip`` steps, time spent in validation excluded.

    The first steps pay for compilation, autotuning and the allocator's warm-up; the rate after
    them is what a longer run of the same configuration sustains. The clock is read after a
    device synchronisation at those boundaries only (the start, each validation, the end), never
    per step. ``steps_per_s`` is ``None`` when the run ended before ``skip`` steps.
    """

    def __init__(self, skip: int = 50):
        self.skip = skip
        self.origin = self.start = self.first = self.val_start = None
        self.paused = 0.0
        self.steps_per_s: float | None = None

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self.origin, self.start, self.paused, self.steps_per_s = trainer.global_step, None, 0.0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is None and trainer.global_step - self.origin >= self.skip:
            self.start, self.first = self._now(pl_module), trainer.global_step

    def on_validation_start(self, trainer, pl_module):
        if self.start is not None and not trainer.sanity_checking:
            self.val_start = self._now(pl_module)

    def on_validation_end(self, trainer, pl_module):
        if self.val_start is not None:
            self.paused += self._now(pl_module) - self.val_start
            self.val_start = None

    def on_train_end(self, trainer, pl_module):
        steps = trainer.global_step - self.first if self.start is not None else 0
        if steps > 0:
            self.steps_per_s = steps / (self._now(pl_module) - self.start - self.paused)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it into place.

    A process killed mid-write leaves the previous checkpoint intact, never a truncated one.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
