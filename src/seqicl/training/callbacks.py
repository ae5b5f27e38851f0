"""Callbacks beyond Lightning's own."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


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
