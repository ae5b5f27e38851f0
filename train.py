"""Train one model on one task: ``python -m train [experiment=...] [key=value ...]``.

The whole run lives in ``seqicl.training``; this file is the Hydra entry point.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from seqicl.cli import (check_overrides, fail, in_multirun, open_mapping, print_summary, run_dir, run_isolated,
                        select_layer_configs)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    from seqicl.errors import ConfigError
    from seqicl.training import train
    from seqicl.training.config import validate
    from seqicl.training.module import Diverged

    if in_multirun():
        return run_isolated(cfg, lambda: train(validate(cfg), run_dir(cfg)))
    try:
        c = validate(cfg)
        results = train(c, run_dir(cfg))
    except ConfigError as e:
        fail(e)
    except Diverged as e:
        fail(f"{e}; results.json records status 'diverged' in {run_dir(cfg)}", code=1)
    print_summary(results, run_dir(cfg))
    return results


if __name__ == "__main__":
    # trainer.KEY=VALUE may name any lightning Trainer argument, declared in the trainer file or not.
    sys.argv[1:] = open_mapping("trainer", select_layer_configs(sys.argv[1:]))
    if not {"--multirun", "-m"} & set(sys.argv[1:]):
        check_overrides("train", sys.argv[1:])
    main()
