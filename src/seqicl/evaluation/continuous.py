"""Continuous tasks (regression, Boolean functions): the task's own objective and statistics.

Whatever the objective and ``eval_stats`` report is kept: scalars as metrics, vectors as
curves, and every ``<metric>_by_k`` curve is plotted with the baselines (``plot_curves``).
"""

from __future__ import annotations

import torch
from torch import nn

from seqicl.evaluation.base import Settings, Totals, batches, register_evaluator
from seqicl.evaluation.plots import plot_curves
from seqicl.training.objectives import objective_fn


@register_evaluator("continuous")
def evaluate_continuous(model: nn.Module, task, data: dict, settings: Settings) -> dict:
    objective = objective_fn(task.objective)
    totals = Totals()
    with torch.no_grad():
        for batch in batches(data, settings):
            _, stats = objective(model, batch, task, train=False)
            totals.add(stats)
    curves = totals.vectors()
    return {"metrics": totals.scalars(), "curves": curves, "files": plot_curves(settings.out, task, curves)}
