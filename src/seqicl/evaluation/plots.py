"""PNG plots of evaluation curves and metrics (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SUFFIX = "_by_k"
BASELINE = "baseline_"


def line_plot(path: Path, x: list, series: dict[str, list], title: str, xlabel: str, ylabel: str,
              reference: tuple[str, float] | None = None, ylim: tuple | None = None) -> str:
    """One line per entry of ``series`` over ``x`` (``None`` values are gaps); an optional
    horizontal ``reference`` line (label, value). Returns the file name."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (label, y) in enumerate(series.items()):
        values = [float("nan") if v is None else v for v in y]
        ax.plot(x[:len(values)], values, marker="o" if len(values) <= 40 else None, markersize=3,
                linewidth=2.0 if i == 0 else 1.2, label=label)
    if reference is not None:
        ax.axhline(reference[1], color="grey", linestyle="--", linewidth=1, label=reference[0])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if len(series) > 1 or reference is not None:
        ax.legend(fontsize=8)
    return _save(fig, path)


def bar_panels(path: Path, panels: dict[str, dict[str, float]], title: str) -> str:
    """One bar chart per panel (``{panel title: {bar label: value}}``), side by side."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (name, bars) in zip(axes[0], panels.items()):
        ax.bar(list(bars), list(bars.values()), color=[f"C{i}" for i in range(len(bars))])
        for i, v in enumerate(bars.values()):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylim(0, max(1.0, *bars.values()) * 1.1)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_curves(out: Path, task, curves: dict[str, list]) -> list[str]:
    """A plot per curve named ``<metric>_by_k`` (the metric after ``k`` in-context examples).

    The baselines' curves (``baseline_<name>_by_k``) are drawn as extra lines on the plot of the
    task's selection metric (``task.selection_metric``), or of the first curve when that has none.
    """
    by_k = {name: v for name, v in curves.items() if name.endswith(SUFFIX) and isinstance(v, list)}
    baselines = {name[len(BASELINE):-len(SUFFIX)]: v for name, v in by_k.items() if name.startswith(BASELINE)}
    metrics = [name for name in by_k if not name.startswith(BASELINE)]
    if not metrics:
        return []
    host = f"{task.selection_metric}{SUFFIX}"
    host = host if host in metrics else metrics[0]
    files = []
    for name in metrics:
        metric = name[:-len(SUFFIX)]
        series = {"model": by_k[name], **(baselines if name == host else {})}
        length = max(len(v) for v in series.values())
        files.append(line_plot(out / f"{name}.png", list(range(length)), series,
                               f"{task.name}: {metric} by in-context examples", "in-context examples k", metric))
    return files


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
