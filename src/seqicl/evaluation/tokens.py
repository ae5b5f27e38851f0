"""Token tasks: accuracy overall, per scored position, and per number of in-context pairs.

Accuracy is micro-averaged over scored positions (``targets != -100``), as in training. The
``k``-th scored position of a sequence is its ``k``-th target from the left (for MQAR, the
``k``-th query). The number of in-context pairs of an example is its ``num_kv_pairs`` entry
when the batch has one, else the task's ``num_kv_pairs`` or ``num_pairs`` when it has one.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.evaluation.base import Settings, Totals, batches, register_evaluator
from seqicl.evaluation.plots import line_plot, plot_curves
from seqicl.tasks.base import IGNORE_INDEX
from seqicl.training.objectives import scored_logits

# Names of the per-position and per-pairs statistics, apart from those a task's eval_stats returns.
BY_POSITION, BY_PAIRS = "accuracy by position", "accuracy by pairs"


def pairs_per_example(task, batch: dict) -> torch.Tensor | None:
    """(n,) number of key-value pairs in context per example, or None where the task has no pairs."""
    n = batch["inputs"].shape[0]
    per_example = batch.get("num_kv_pairs")
    if torch.is_tensor(per_example) and per_example.dim() == 1:
        return per_example.long()
    for attr in ("num_kv_pairs", "num_pairs"):
        if isinstance(getattr(task, attr, None), int):
            return torch.full((n,), getattr(task, attr), dtype=torch.long, device=batch["inputs"].device)
    return None


@torch.no_grad()
def token_stats(model: nn.Module, task, batch: dict, extra_stats: Callable | None = None) -> dict:
    """``(sum, count)`` statistics of one batch: loss, accuracy, the task's ``eval_stats``,
    accuracy per scored position and per number of pairs, and ``extra_stats(task, batch, mask,
    logits)`` when given (an evaluator's own statistics of the same forward pass)."""
    targets = batch["targets"]
    mask = targets != IGNORE_INDEX
    logits = scored_logits(model, batch["inputs"], mask).float()
    y = targets[mask]
    correct = (logits.argmax(dim=-1) == y).double()
    count = torch.tensor(float(y.numel()), device=y.device)
    stats = {"loss": (F.cross_entropy(logits, y, reduction="sum"), count), "accuracy": (correct.sum(), count)}
    stats.update(task.eval_stats(batch, mask=mask, logits=logits))
    if extra_stats is not None:
        stats.update(extra_stats(task, batch, mask, logits))
    position = (mask.cumsum(dim=1) - 1)[mask]
    stats[BY_POSITION] = (torch.bincount(position, weights=correct), torch.bincount(position))
    pairs = pairs_per_example(task, batch)
    if pairs is not None:
        p = pairs[:, None].expand_as(mask)[mask]
        stats[BY_PAIRS] = (torch.bincount(p, weights=correct), torch.bincount(p))
    return stats


def random_guess(task) -> float | None:
    try:
        return float(task.random_guess_accuracy())
    except (AttributeError, NotImplementedError):
        return None


@register_evaluator("token")
def evaluate_tokens(model: nn.Module, task, data: dict, settings: Settings,
                    extra_stats: Callable | None = None) -> dict:
    """Token metrics over ``data``; vector statistics become curves, ``*_by_k`` ones plotted (``plot_curves``)."""
    totals = Totals()
    for batch in batches(data, settings):
        totals.add(token_stats(model, task, batch, extra_stats))
    metrics = totals.scalars()
    metrics["scored"] = int(totals.sums["accuracy"][1])
    guess = random_guess(task)
    if guess is not None:
        metrics["random_guess_accuracy"] = guess
    vectors = totals.vectors()
    by_position = vectors.pop(BY_POSITION)
    curves = {"accuracy_by_position": by_position, "scored_by_position": totals.counts(BY_POSITION)}
    reference = None if guess is None else ("random guess", guess)
    files = [line_plot(settings.out / "accuracy_by_position.png", list(range(1, len(by_position) + 1)),
                       {"model": by_position}, f"{task.name}: accuracy by scored position",
                       "k-th scored position of a sequence", "accuracy", reference, ylim=(0, 1.05))]
    if BY_PAIRS in vectors:
        by_pairs = {k: v for k, v in enumerate(vectors.pop(BY_PAIRS)) if v is not None}
        curves["accuracy_by_pairs"] = {str(k): v for k, v in by_pairs.items()}
        if len(by_pairs) > 1:
            files.append(line_plot(settings.out / "accuracy_by_pairs.png", list(by_pairs),
                                   {"model": list(by_pairs.values())}, f"{task.name}: accuracy by key-value pairs "
                                   "in context", "pairs in context", "accuracy", reference, ylim=(0, 1.05)))
    curves.update(vectors)
    files += plot_curves(settings.out, task, vectors)
    return {"metrics": metrics, "curves": curves, "files": files,
            "accuracy_averaging": "micro (correct / scored positions)"}
