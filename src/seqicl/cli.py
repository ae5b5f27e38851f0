"""Shared pieces of the command-line entry points: one-line errors and the closing summary."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
LAYER_SLOTS = ("model.mixer", "model.state_mixer")
_NAME = re.compile(r"^[A-Za-z_]\w*$")


def select_layer_configs(overrides: list[str]) -> list[str]:
    """Setting a layer slot's ``_target_`` or ``name`` replaces the slot's whole layer config.

    ``model.mixer._target_=pkg.module.Class`` (with or without ``+``) adds
    ``layer@model.mixer=custom``; ``model.mixer.name=NAME`` adds ``layer@model.mixer=NAME`` when
    ``configs/layer/NAME.yaml`` exists, and ``custom`` otherwise (a layer registered by a module
    in ``imports``). So the previous layer's hyper-parameters never reach the new class. A slot
    whose layer config is selected explicitly (``layer@model.mixer=...``) is left as it is.
    """
    out = list(overrides)
    for slot in LAYER_SLOTS:
        if any(o.lstrip("~+").startswith(f"layer@{slot}=") for o in out):
            continue
        for i, override in enumerate(out):
            key, sep, value = override.partition("=")
            bare = key.lstrip("+")
            if not sep or key.startswith("~"):
                continue
            if bare == f"{slot}._target_":
                out[i] = f"{bare}={value}"
                out.append(f"layer@{slot}=custom")
                break
            if bare == f"{slot}.name" and _NAME.match(value):
                has_config = (Path(CONFIG_DIR) / "layer" / f"{value}.yaml").exists()
                out.append(f"layer@{slot}={value if has_config else 'custom'}")
                break
    return out


def run_dir(cfg: DictConfig) -> str:
    return str(cfg.paths.output_dir)


def fail(err: Exception, code: int = 2) -> None:
    """Print ``error: ...`` on one line and exit (no traceback for a user's mistake)."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)


def print_summary(results: dict, directory: str) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = results.get("selection_metric", "accuracy")
    short = {"accuracy": "acc"}.get(metric, metric)
    table = Table(title="seqicl run", show_header=True)
    for col in ("task", "model", "params", "steps", "wall time", f"val {short}", f"test {short}"):
        table.add_column(col, justify="right" if col not in ("task", "model") else "left")
    fmt = lambda d: "-" if metric not in d else f"{d[metric]:.4f}"  # noqa: E731
    table.add_row(results["task"], results["model"], f"{results['params']:,}", str(results["steps"]),
                  f"{results['wall_time_s']:.1f} s", fmt(results["val"]), fmt(results["test"]))
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(f"run directory: {directory}")


def _one_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    head, rest = lines[0], lines[1:]
    if rest and rest[0].startswith("Available options"):
        options = []
        for ln in rest[1:]:
            if ln.startswith("Config search path"):
                break
            options.append(ln)
        return f"{head}; {rest[0].rstrip(':').lower()}: {', '.join(options)}"
    return head


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The config composed with ``overrides`` (Hydra's compose API), or a one-line ConfigError.

    A misspelt key names the closest valid one; an unknown config option lists the valid ones.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from seqicl.errors import ConfigError
    from seqicl.training.config import check_keys

    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            try:
                return compose(config_name, overrides=overrides, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException) as e:
                m = re.search(r"Could not override '([^']+)'", str(e))
                if m:
                    key = m.group(1)
                    rest = [o for o in overrides if not o.lstrip("~+").startswith(key + "=")]
                    cfg = compose(config_name, overrides=rest)
                    parent, _, leaf = key.rpartition(".")
                    node = OmegaConf.select(cfg, parent) if parent else cfg
                    if isinstance(node, DictConfig):
                        check_keys(parent, [leaf], list(node.keys()))
                raise
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_one_line(e)) from None


def check_overrides(config_name: str, argv: list[str]) -> None:
    """Compose the config with the command-line overrides once, before Hydra runs.

    A misspelt key, an unknown config option or an unparsable override then ends in one line
    naming the problem and the valid choices, instead of Hydra's multi-line report.
    """
    from seqicl.errors import ConfigError

    try:
        cfg = compose_config(config_name, [a for a in argv if not a.startswith("-")])
    except ConfigError as e:
        fail(e)
    _check_writable(Path(str(cfg.hydra.run.dir)) if _has_run_dir(argv) else Path(str(cfg.paths.log_dir)))


def open_mapping(key: str, argv: list[str]) -> list[str]:
    """Overrides of entries of ``key``, a mapping with no fixed keys, as additions.

    ``task.num_kv_pairs=8`` becomes ``++task.num_kv_pairs=8``, which Hydra accepts for a key the
    config does not declare; what the entries may be is checked where they are used.
    """
    return [f"++{a}" if a.startswith(f"{key}.") and "=" in a else a for a in argv]


def _has_run_dir(argv: list[str]) -> bool:
    return any(a.startswith("hydra.run.dir=") for a in argv)


def _check_writable(path: Path) -> None:
    """Fail early, in one line, when the run directory cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".seqicl-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        fail(f"cannot write to output directory {path}: {e.strerror or e}")


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_isolated(cfg: DictConfig, job: Callable[[], dict], results_name: str = "results.json") -> dict | None:
    """One job of a multirun: skip it if finished; record a failure instead of ending the sweep.

    ``job`` does the work and writes ``results_name`` (with ``"status": "completed"``) in the
    job's output directory; a failure writes that file with ``"status": "failed"`` and the error,
    and the traceback to ``error.log``.
    """
    from seqicl.training.run import finished_results, record_failure

    out = Path(run_dir(cfg))
    previous = finished_results(out, results_name)
    if previous is not None:
        print(f"skip (finished): {out}")
        return previous
    try:
        return job()
    except Exception as e:  # noqa: BLE001 - a sweep records every failure and goes on
        status = record_failure(out, e, results_name)
        print(f"{status}: {out}: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return None
