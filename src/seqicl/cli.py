"""Shared pieces of the command-line entry points: one-line errors and the closing summary."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def run_dir(cfg: DictConfig) -> str:
    return str(cfg.paths.output_dir)


def fail(err: Exception, code: int = 2) -> None:
    """Print ``error: ...`` on one line and exit (no traceback for a user's mistake)."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)


def print_summary(results: dict, directory: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="seqicl run", show_header=True)
    for col in ("task", "model", "params", "steps", "wall time", "val acc", "test acc"):
        table.add_column(col, justify="right" if col not in ("task", "model") else "left")
    fmt = lambda d: "-" if "accuracy" not in d else f"{d['accuracy']:.4f}"  # noqa: E731
    table.add_row(results["task"], results["model"], f"{results['params']:,}", str(results["steps"]),
                  f"{results['wall_time_s']:.1f} s", fmt(results["val"]), fmt(results["test"]))
    console = Console()
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


def check_overrides(config_name: str, argv: list[str]) -> None:
    """Compose the config with the command-line overrides once, before Hydra runs.

    A misspelt key, an unknown config option or an unparsable override then ends in one line
    naming the problem and the valid choices, instead of Hydra's multi-line report.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from seqicl.training.config import check_keys

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            try:
                cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
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
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        fail(_one_line(e))
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
    import json
    import traceback

    from seqicl.training.run import write_results

    out = Path(run_dir(cfg))
    if (out / results_name).exists():
        previous = json.loads((out / results_name).read_text())
        if previous.get("status") == "completed":
            print(f"skip (finished): {out}")
            return previous
    try:
        return job()
    except Exception as e:  # noqa: BLE001 - a sweep records every failure and goes on
        from seqicl.training.module import Diverged

        status = "diverged" if isinstance(e, Diverged) else "failed"
        line = f"{type(e).__name__}: {e}".splitlines()[0]
        if status == "failed" or not (out / results_name).exists():
            out.mkdir(parents=True, exist_ok=True)
            write_results(out, {"status": status, "error": line}, results_name)
            (out / "error.log").write_text(traceback.format_exc())
        print(f"{status}: {out}: {line}", file=sys.stderr)
        return None
