"""Callbacks beyond Lightning's own."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class StopAtAccuracy(pl.Callback):
    """Stop training once validation accuracy reaches ``threshold`` (validation data only)."""

    def __init__(self, threshold: float, monitor: str = "val/accuracy"):
        self.threshold, self.monitor = threshold, monitor

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) >= self.threshold and not trainer.sanity_checking:
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
