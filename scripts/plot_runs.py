"""Plot a metric over training steps for several runs, and print each run's last and best value.

    python scripts/plot_runs.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--metric val/accuracy]
        [--out curves.png] [--title TEXT] [--reference LABEL=VALUE ...]

Each RUN_DIR is a ``python -m train`` output directory (its ``metrics.csv`` is read; a directory
holding only ``metrics.csv`` will do). ``--reference`` draws horizontal lines (a published number,
chance). The table goes to stdout; the plot to ``--out`` (PNG).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(run_dir: Path, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``metric`` in ``run_dir/metrics.csv``, in step order, rows without it skipped."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        raise SystemExit(f"{path} does not exist")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    if rows and metric not in rows[0]:
        columns = ", ".join(c for c in rows[0] if c not in ("epoch", "step"))
        raise SystemExit(f"{path} has no column {metric!r}; it has: {columns}")
    points = sorted((int(r["step"]), float(r[metric])) for r in rows if r.get(metric))
    if not points:
        raise SystemExit(f"{path} has no values of {metric!r}")
    steps, values = zip(*points)
    return list(steps), list(values)


def parse_pair(text: str, what: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep or not label or not value:
        raise SystemExit(f"expected LABEL={what}, got {text!r}")
    return label, value


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--metric", default="val/accuracy")
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    parser.add_argument("--title", default=None)
    parser.add_argument("--reference", nargs="*", action="extend", default=[], help="LABEL=VALUE horizontal lines (the flag may repeat)")
    parser.add_argument("--minimise", action="store_true", help="the best value is the lowest (losses)")
    args = parser.parse_args(argv)

    fig, ax = plt.subplots(figsize=(7, 4))
    summary = []
    for i, text in enumerate(args.runs):
        label, run_dir = parse_pair(text, "RUN_DIR")
        steps, values = read_curve(Path(run_dir), args.metric)
        ax.plot(steps, values, color=f"C{i}", linewidth=1.5, label=label)
        best = min(values) if args.minimise else max(values)
        summary.append({"run": label, "last_step": steps[-1], "last": values[-1], "best": best,
                        "best_step": steps[values.index(best)]})
    for j, text in enumerate(args.reference):
        label, value = parse_pair(text, "VALUE")
        ax.axhline(float(value), color=f"C{len(args.runs) + j}", linestyle="--", linewidth=1, label=label)
    ax.set(xlabel="training step", ylabel=args.metric, title=args.title or args.metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)

    width = max(len(s["run"]) for s in summary)
    print(f"{'run':<{width}}  {'last step':>9}  {'last':>7}  {'best':>7}  {'at step':>7}")
    for s in summary:
        print(f"{s['run']:<{width}}  {s['last_step']:>9}  {s['last']:>7.4f}  {s['best']:>7.4f}  {s['best_step']:>7}")
    print(f"plot: {args.out}")
    return summary


if __name__ == "__main__":
    main()
