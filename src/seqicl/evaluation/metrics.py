"""Evaluation statistics as (sum, count) pairs, overall and per position."""

from __future__ import annotations

import torch


def per_position_stats(name: str, values: torch.Tensor, mask: torch.Tensor) -> dict:
    """``{name: (sum, count), name + "_by_k": (sums, counts)}`` of ``values`` (n, points) over ``mask``.

    Position ``k`` of a prompt is the prediction made after ``k`` in-context examples, so the
    ``_by_k`` vector is the learning curve over the number of examples.
    """
    m = mask.to(values.dtype)
    v = values.detach() * m
    by_k = v.sum(dim=0), m.sum(dim=0)
    return {name: (by_k[0].sum(), by_k[1].sum()), f"{name}_by_k": by_k}
