"""The LightningModule: loss on scored positions, micro-averaged accuracy, AdamW + schedule."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from seqicl.errors import ConfigError
from seqicl.models.lm import weight_decay_split
from seqicl.tasks.base import IGNORE_INDEX

SCHEDULES = ("cosine", "linear", "constant")


def lr_lambda(name: str, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Multiplier of the peak learning rate at each step: linear warm-up, then the schedule."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return f


class SeqICLModule(pl.LightningModule):
    """Trains a token model on ``loss_targets`` (or ``targets``) and evaluates on ``targets``.

    Accuracy is micro-averaged: correct predictions over all scored positions of the split.
    """

    def __init__(self, model: nn.Module, optim: dict, scheduler: dict, max_steps: int):
        super().__init__()
        self.model = model
        self.optim_cfg, self.sched_cfg, self.max_steps = dict(optim), dict(scheduler), max_steps
        self._sums: dict[str, torch.Tensor] = {}
        self.final_metrics: dict[str, dict] = {}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def _scored_logits(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits at the positions in ``mask`` only, when the model exposes hidden() and head."""
        if hasattr(self.model, "hidden") and hasattr(self.model, "head"):
            return self.model.head(self.model.hidden(inputs)[mask])
        return self.model(inputs)[mask]

    def _step(self, inputs, targets):
        mask = targets != IGNORE_INDEX
        logits = self._scored_logits(inputs, mask)
        y = targets[mask]
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(dim=-1) == y).sum()
        return loss_sum, correct, y.numel()

    def training_step(self, batch, batch_idx):
        targets = batch.get("loss_targets", batch["targets"])
        loss_sum, correct, count = self._step(batch["inputs"], targets)
        loss = loss_sum / max(count, 1)
        self.log("train/loss", loss, prog_bar=True)
        if "loss_targets" not in batch:
            self.log("train/accuracy", correct / max(count, 1))
        return loss

    def _eval_step(self, batch, prefix: str):
        loss_sum, correct, count = self._step(batch["inputs"], batch["targets"])
        s = self._sums.setdefault(prefix, torch.zeros(3, dtype=torch.float64, device=self.device))
        s += torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(count), device=self.device,
                                                                             dtype=torch.float64)])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _eval_end(self, prefix: str) -> None:
        s = self._sums.pop(prefix, None)
        if s is None:
            return
        s = self.trainer.strategy.reduce(s, reduce_op="sum")
        loss, correct, count = s.tolist()
        metrics = {"accuracy": correct / max(count, 1), "loss": loss / max(count, 1), "scored": int(count)}
        self.final_metrics[prefix] = metrics
        self.log(f"{prefix}/accuracy", metrics["accuracy"], prog_bar=True, sync_dist=False)
        self.log(f"{prefix}/loss", metrics["loss"], sync_dist=False)

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def on_test_epoch_end(self):
        self._eval_end("test")

    def configure_optimizers(self):
        cfg = self.optim_cfg
        if cfg.get("name", "adamw") != "adamw":
            raise ConfigError(f"optim.name must be adamw, got {cfg.get('name')!r}")
        decay, no_decay = weight_decay_split(self.model)
        groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = bool(cfg.get("fused")) and self.device.type == "cuda"
        opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                                fused=fused or None)
        sc = self.sched_cfg
        if sc["name"] not in SCHEDULES:
            raise ConfigError(f"scheduler.name must be one of {', '.join(SCHEDULES)}, got {sc['name']!r}")
        warmup = sc.get("warmup_steps")
        if warmup is None:
            warmup = int(sc.get("warmup_fraction", 0.0) * self.max_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(sc["name"], max(1, int(warmup)), self.max_steps, sc["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
