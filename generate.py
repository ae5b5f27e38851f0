"""Evaluate a trained model and generate from it: ``python -m generate ckpt=PATH [key=value ...]``.

The whole evaluation lives in ``seqicl.evaluation``; this file is the Hydra entry point.
``task.NAME=VALUE`` changes a parameter of the checkpoint's task.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from seqicl.cli import check_overrides, fail, in_multirun, open_mapping, run_dir, run_isolated


@hydra.main(version_base="1.3", config_path="configs", config_name="generate")
def main(cfg: DictConfig) -> dict | None:
    from seqicl.errors import ConfigError
    from seqicl.evaluation.generate import RESULTS, run

    if in_multirun():
        return run_isolated(cfg, lambda: run(cfg, run_dir(cfg)), RESULTS)
    try:
        return run(cfg, run_dir(cfg))
    except ConfigError as e:
        fail(e)


if __name__ == "__main__":
    if any(a.startswith("task=") for a in sys.argv[1:]):
        fail("the task comes from the checkpoint; change its parameters with task.NAME=VALUE")
    sys.argv[1:] = open_mapping("task", sys.argv[1:])
    if not {"--multirun", "-m"} & set(sys.argv[1:]):
        check_overrides("generate", sys.argv[1:])
    main()
