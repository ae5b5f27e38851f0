"""A curriculum over prompt sizes (Garg et al. 2022): small problems first, the full size later.

A task that owns a :class:`Curriculum` is sampled by the training stream with the training
step (``task.sample(n, seed, device, step=...)``); the step counts training batches and comes
from the stream's own position, so a resumed run continues the schedule where it stopped.
Evaluation always samples the full-size task (``step=None``).
"""

from __future__ import annotations

from collections.abc import Mapping

from seqicl.errors import ConfigError
from seqicl.tasks.base import check_int

AXES = ("dims", "points")
KEYS = ("start", "inc", "interval")


class Curriculum:
    """Maps a training step to ``(n_dims, n_points)``.

    Each axis starts at ``start``, grows by ``inc`` every ``interval`` steps and stops at the
    task's full size. Built from a mapping such as ::

        {"dims": {"start": 5, "inc": 1, "interval": 2000},
         "points": {"start": 11, "inc": 2, "interval": 2000}}

    An axis left out stays at its full size.
    """

    def __init__(self, spec: Mapping, n_dims: int, n_points: int):
        if not isinstance(spec, Mapping):
            raise ConfigError(f"curriculum must be a mapping with keys {' and '.join(AXES)} (or null), got {spec!r}")
        unknown = sorted(set(spec) - set(AXES))
        if unknown:
            raise ConfigError(f"curriculum has no axis {unknown[0]!r}; its axes: {', '.join(AXES)}")
        self.end = {"dims": n_dims, "points": n_points}
        self.axes: dict[str, dict] = {}
        for axis, sub in spec.items():
            where = f"curriculum.{axis}"
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{where} must be a mapping with keys {', '.join(KEYS)}, got {sub!r}")
            unknown = sorted(set(sub) - set(KEYS))
            if unknown:
                raise ConfigError(f"{where} has no key {unknown[0]!r}; its keys: {', '.join(KEYS)}")
            missing = [k for k in KEYS if k not in sub]
            if missing:
                raise ConfigError(f"{where}.{missing[0]} is missing")
            self.axes[axis] = {
                "start": check_int(f"{where}.start", sub["start"], low=1, high=self.end[axis]),
                "inc": check_int(f"{where}.inc", sub["inc"], low=1),
                "interval": check_int(f"{where}.interval", sub["interval"], low=1),
            }

    def size(self, axis: str, step: int) -> int:
        if axis not in self.axes:
            return self.end[axis]
        a = self.axes[axis]
        return min(self.end[axis], a["start"] + a["inc"] * (step // a["interval"]))

    def at(self, step: int) -> tuple[int, int]:
        """``(n_dims, n_points)`` of the prompts drawn at training step ``step``."""
        step = check_int("step", step, low=0)
        return self.size("dims", step), self.size("points", step)

    def full_size_step(self) -> int:
        """The first step at which both axes have reached the full size."""
        steps = [0]
        for axis, a in self.axes.items():
            grows = -(-(self.end[axis] - a["start"]) // a["inc"])
            steps.append(grows * a["interval"])
        return max(steps)

    def as_config(self) -> dict:
        return {axis: dict(a) for axis, a in self.axes.items()}

    def __repr__(self) -> str:
        return f"Curriculum({self.as_config()})"
