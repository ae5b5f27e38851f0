"""Objectives: how a batch becomes a loss and evaluation statistics.

Each objective returns ``(loss, stats)``; ``stats`` maps a metric name to ``(sum, count)``
tensors (scalars or vectors, e.g. per-position curves). Sums and counts are accumulated over a
whole split and divided at the end, so every metric is micro-averaged over what it counts.
A task chooses its objective by name (``task.objective``) and may add statistics of its own
through ``task.eval_stats(batch, **outputs)``.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.evaluation.metrics import per_position_stats
from seqicl.tasks.base import IGNORE_INDEX

Stats = Dict[str, tuple]
OBJECTIVES: Dict[str, Callable] = {}


def objective(name: str):
    def deco(fn):
        OBJECTIVES[name] = fn
        return fn

    return deco


def scored_logits(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits at the positions in ``mask`` only, when the model exposes ``hidden`` and ``head``."""
    if hasattr(model, "hidden") and hasattr(model, "head"):
        return model.head(model.hidden(inputs)[mask])
    return model(inputs)[mask]


def _fixed_count_logits(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, k: int):
    """Logits and targets at the k scored positions of every row, without a host sync.

    Boolean indexing needs the number of scored positions on the host; when every row has
    exactly k of them, a top-k over the mask finds them on the device.
    """
    if not (hasattr(model, "hidden") and hasattr(model, "head")):
        return None
    h = model.hidden(inputs)
    if k == targets.shape[1]:
        return model.head(h).flatten(0, 1), targets.flatten()
    idx = (targets != IGNORE_INDEX).float().topk(k, dim=1, sorted=False).indices
    h = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
    return model.head(h).flatten(0, 1), targets.gather(1, idx).flatten()


@objective("cross_entropy")
def cross_entropy(model: nn.Module, batch: dict, task, train: bool) -> tuple[torch.Tensor, Stats]:
    """Token tasks: cross-entropy and accuracy over scored positions (``targets != -100``).

    Training uses ``loss_targets`` when the task provides them (e.g. an all-next-token loss).
    A task whose training targets score the same number of positions in every row says so in
    ``train_scored_per_example``, which keeps the training step free of host syncs.
    """
    targets = batch.get("loss_targets", batch["targets"]) if train else batch["targets"]
    k = getattr(task, "train_scored_per_example", None) if train else None
    fixed = _fixed_count_logits(model, batch["inputs"], targets, k) if k else None
    if fixed is not None:
        logits, y = fixed
        count = torch.tensor(float(y.numel()), device=y.device)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(dim=-1) == y).sum().float()
        return loss_sum / count, {"loss": (loss_sum.detach(), count), "accuracy": (correct, count)}
    mask = targets != IGNORE_INDEX
    logits = scored_logits(model, batch["inputs"], mask)
    y = targets[mask]
    loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
    count = torch.tensor(float(y.numel()), device=y.device)
    correct = (logits.argmax(dim=-1) == y).sum().float()
    stats = {"loss": (loss_sum.detach(), count), "accuracy": (correct, count)}
    if not train:
        stats.update(task.eval_stats(batch, mask=mask, logits=logits))
    return loss_sum / count.clamp(min=1), stats


def _scored_points(batch: dict) -> torch.Tensor:
    """The points of a continuous batch that are scored (all of them when there is no ``mask``)."""
    mask = batch.get("mask")
    return torch.ones_like(batch["ys"], dtype=torch.bool) if mask is None else mask


@objective("mse")
def mse(model: nn.Module, batch: dict, task, train: bool) -> tuple[torch.Tensor, Stats]:
    """Continuous tasks with real labels: mean squared error over the scored points.

    The loss is the plain squared error; the reported ``mse`` and ``mse_by_k`` (per number of
    in-context examples) divide it by ``task.error_scale`` (for the regression tasks ``n_dims``,
    so that predicting 0 scores about 1).
    """
    mask = _scored_points(batch)
    preds = model(batch["xs"], batch["ys"]).float()
    err = (preds - batch["ys"].float()) ** 2
    count = mask.sum().float()
    loss_sum = err[mask].sum()
    stats = {"loss": (loss_sum.detach(), count)}
    if not train:
        stats.update(per_position_stats("mse", err / float(getattr(task, "error_scale", 1.0)), mask))
        stats.update(task.eval_stats(batch, mask=mask, preds=preds))
    return loss_sum / count.clamp(min=1), stats


@objective("bce")
def bce(model: nn.Module, batch: dict, task, train: bool) -> tuple[torch.Tensor, Stats]:
    """Continuous tasks with 0/1 labels: binary cross-entropy on logits over the scored points;
    accuracy thresholds the logit at 0 (overall and ``accuracy_by_k``)."""
    mask = _scored_points(batch)
    logits = model(batch["xs"], batch["ys"]).float()
    target = batch["ys"].float()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    count = mask.sum().float()
    loss_sum = loss[mask].sum()
    correct = ((logits > 0) == (target > 0.5)).float()
    stats = {"loss": (loss_sum.detach(), count), "accuracy": ((correct * mask).sum(), count)}
    if not train:
        stats.update(per_position_stats("accuracy", correct, mask))
        stats.update(task.eval_stats(batch, mask=mask, logits=logits))
    return loss_sum / count.clamp(min=1), stats


def objective_fn(name: str) -> Callable:
    return OBJECTIVES[name]
