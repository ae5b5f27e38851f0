"""The evaluator registry, evaluation settings and micro-averaged totals.

An evaluator is a function ``evaluate(model, task, data, settings) -> dict`` registered under a
task name (``dfa``) or a task kind (``token``, ``continuous``); ``evaluator_for`` prefers the
name. It reads the examples ``data`` (one batch dict) in batches of ``settings.batch_size`` on
``settings.device``, writes its plots and files into ``settings.out`` and returns

    {"metrics": {name: float},        # scalars, shown in the console table
     "curves": {name: list | dict},   # vectors (per position, per number of examples ...)
     "files": [file names written],
     ...}                             # any other section goes into generate.json as it is

plus, optionally, ``"samples"``: a list of ``{column: text}`` rows shown on the console.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator

import torch
import torch.nn.functional as F

from seqicl.errors import ConfigError
from seqicl.tasks.datamodule import EvalBatches
from seqicl.tasks.splits import batch_to

EVALUATORS: Dict[str, Callable] = {}


def register_evaluator(key: str):
    """Register an evaluator for the task named ``key``, or for every task of kind ``key``."""

    def deco(fn: Callable) -> Callable:
        EVALUATORS[key] = fn
        return fn

    return deco


def evaluator_for(task) -> Callable:
    for key in (task.name, task.kind):
        if key in EVALUATORS:
            return EVALUATORS[key]
    raise ConfigError(f"no evaluator for task {task.name!r} of kind {task.kind!r}; "
                      f"evaluators exist for {', '.join(sorted(EVALUATORS))}")


@dataclass
class Settings:
    out: Path                   # the output directory
    device: torch.device
    batch_size: int
    seed: int                   # seeds sampling
    samples: int                # examples to show
    temperature: float          # of sampled continuations


def batches(data: dict, settings: Settings) -> Iterator[dict]:
    for batch in EvalBatches(data, settings.batch_size):
        yield batch_to(batch, settings.device)


class Totals:
    """``(sum, count)`` statistics summed over a split; a metric is sum / count (micro-averaged).

    Vector statistics may grow from batch to batch (a longer sequence, a larger number of
    pairs): shorter vectors are padded with zeros.
    """

    def __init__(self):
        self.sums: dict[str, list[torch.Tensor]] = {}

    def add(self, stats: dict) -> None:
        for name, (s, c) in stats.items():
            s = s.detach().double().cpu()
            c = torch.as_tensor(c).double().cpu().expand_as(s)
            if name not in self.sums:
                self.sums[name] = [s.clone(), c.clone()]
                continue
            total = self.sums[name]
            if s.dim():
                n = max(s.numel(), total[0].numel())
                s, c = _pad(s, n), _pad(c, n)
                total[:] = _pad(total[0], n), _pad(total[1], n)
            total[0] += s
            total[1] += c

    def scalars(self) -> dict[str, float]:
        return {name: float(s / c.clamp(min=1)) for name, (s, c) in self.sums.items() if s.dim() == 0}

    def vectors(self) -> dict[str, list]:
        """Per-entry metrics; ``None`` where nothing was counted."""
        return {name: [float(v / n) if n > 0 else None for v, n in zip(s.tolist(), c.tolist())]
                for name, (s, c) in self.sums.items() if s.dim() == 1}

    def counts(self, name: str) -> list[int]:
        return [int(n) for n in self.sums[name][1].tolist()]


def _pad(v: torch.Tensor, n: int) -> torch.Tensor:
    return F.pad(v, (0, n - v.numel()))
