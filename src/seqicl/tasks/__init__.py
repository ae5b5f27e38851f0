"""Synthetic in-context-learning tasks: a registry of seeded, vectorised generators.

    import seqicl.tasks as tasks
    tasks.available()                   # sorted task names
    task = tasks.build("mqar", seq_len=64, num_kv_pairs=4)
    batch = task.sample(8, seed=0)      # {"inputs": (8, 64), "targets": (8, 64)}
    splits = tasks.make_splits(task, 1000, 100, 100, seed=0)
"""

import importlib
import pkgutil

from seqicl.tasks.base import (IGNORE_INDEX, ContinuousTask, Task, TokenTask, available, build,
                               parameters, register, task_class)
from seqicl.tasks.splits import assert_disjoint, example_hashes, make_splits

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in {"base", "splits", "datamodule"}:
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["IGNORE_INDEX", "ContinuousTask", "Task", "TokenTask", "available", "build", "parameters", "register",
           "task_class", "make_splits", "assert_disjoint", "example_hashes"]
