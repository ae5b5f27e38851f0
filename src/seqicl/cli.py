"""Shared pieces of the command-line entry points: one-line errors and the closing summary."""

from __future__ import annotations

import sys

from omegaconf import DictConfig


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
    table = Table(title="seqicl run", show_header=True)
    for col in ("task", "model", "params", "steps", "wall time", f"val {metric}", f"test {metric}"):
        table.add_column(col, justify="right" if col not in ("task", "model") else "left")
    fmt = lambda d: "-" if metric not in d else f"{d[metric]:.4f}"  # noqa: E731
    table.add_row(results["task"], results["model"], f"{results['params']:,}", str(results["steps"]),
                  f"{results['wall_time_s']:.1f} s", fmt(results["val"]), fmt(results["test"]))
    console = Console()
    console.print(table)
    console.print(f"run directory: {directory}")
