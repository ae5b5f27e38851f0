"""Sweep reports: results.csv (one row per run), report.md (tables as in the papers), PNG plots.

Model selection happens here, on validation metrics only: within each group of runs that
differ only in the ``select.over`` axes (e.g. the learning rate), the run with the best
``select.metric`` is kept and its test metric reported.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from seqicl.sweeps.engine import Protocol


def select_best(df: pd.DataFrame, protocol: Protocol) -> pd.DataFrame:
    """The best completed run per group, chosen on ``select.metric`` (a validation metric)."""
    done = df[df["status"] == "completed"].copy()
    over = [a for a in protocol.select.get("over", []) if a in protocol.grid]
    metric = protocol.select.get("metric", "val.accuracy")
    if not metric.startswith("val."):
        raise ValueError(f"sweep {protocol.name}: select.metric must be a validation metric, got {metric!r}")
    keys = [a for a in protocol.grid if a not in over]
    if done.empty or metric not in done:
        return done.iloc[0:0]
    ascending = protocol.select.get("mode", "max") == "min"
    done = done.sort_values(metric, ascending=ascending, kind="stable")
    return done.groupby(keys, sort=False, dropna=False).head(1) if keys else done.head(1)


def _label(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = [str(c) for c in df.columns]
    index_name = " / ".join(str(n) for n in df.index.names if n) or ""
    lines = [f"| {index_name} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in df.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        cells = []
        for v in row.tolist():
            if isinstance(v, float):
                cells.append("–" if math.isnan(v) else format(v, floatfmt))
            else:
                cells.append(str(v))
        lines.append("| " + " / ".join(_label(i) for i in idx) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(best: pd.DataFrame, protocol: Protocol) -> pd.DataFrame | None:
    rep = protocol.report
    metric = rep.get("metric", "test.accuracy")
    rows, cols = rep.get("rows", []), rep.get("columns", [])
    if best.empty or metric not in best or not rows:
        return None
    data = best.copy()
    average = rep.get("average_over", [])
    if average:
        keep = [k for k in [*rows, *cols] if k not in average]
        data = data.groupby(keep, dropna=False)[metric].mean().reset_index()
    if cols:
        return data.pivot_table(index=rows, columns=cols, values=metric, aggfunc="mean")
    return data.groupby(rows, dropna=False)[metric].mean().to_frame(metric)


def plot(best: pd.DataFrame, protocol: Protocol, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = protocol.report.get("plot")
    metric = protocol.report.get("metric", "test.accuracy")
    if not spec or best.empty or metric not in best:
        return []
    x, series, facet = spec["x"], spec.get("series"), spec.get("facet")
    facets = sorted(best[facet].dropna().unique(), key=str) if facet else [None]
    fig, axes = plt.subplots(1, len(facets), figsize=(4 * len(facets), 3.4), squeeze=False, sharey=True)
    for ax, fv in zip(axes[0], facets):
        sub = best if fv is None else best[best[facet] == fv]
        groups = sub.groupby(series, dropna=False) if series else [(None, sub)]
        for name, g in groups:
            g = g.groupby(x)[metric].mean().sort_index()
            kind = spec.get("kind", "line")
            if kind == "bar":
                ax.bar([_label(v) for v in g.index], g.values, label=_label(name), alpha=0.7)
            else:
                ax.plot(g.index, g.values, marker="o", label=None if name is None else _label(name))
        if spec.get("logx"):
            ax.set_xscale("log", base=2)
        ax.set_xlabel(x)
        ax.set_title(f"{facet}={_label(fv)}" if fv is not None else protocol.name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    if series:
        axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / f"{protocol.name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def write_report(rows: list[dict], protocol: Protocol, skipped: int = 0) -> dict:
    """Write results.csv, report.md and plots into the sweep directory; return the counts."""
    out = protocol.out_dir
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    counts = {s: int((df["status"] == s).sum()) for s in ("completed", "failed", "diverged", "missing")}
    counts["total"] = len(df)
    counts["skipped"] = skipped
    best = select_best(df, protocol)
    table = summary_table(best, protocol)
    plots = plot(best, protocol, out)
    lines = [f"# Sweep `{protocol.name}`", ""]
    if protocol.description:
        lines += [protocol.description.strip(), ""]
    lines += [f"Runs: {counts['total']} ({counts['completed']} completed, {counts['failed']} failed, "
              f"{counts['diverged']} diverged, {counts['missing']} missing; {skipped} were already finished "
              "and skipped).", ""]
    sel = protocol.select
    if sel.get("over"):
        lines += [f"Best over {', '.join(sel['over'])} chosen on `{sel.get('metric', 'val.accuracy')}` "
                  f"(validation); the table shows `{protocol.report.get('metric', 'test.accuracy')}`.", ""]
    if table is not None:
        lines += [markdown_table(table), ""]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    bad = df[df["status"].isin(["failed", "diverged"])]
    if not bad.empty:
        lines += ["## Failures", ""]
        for _, r in bad.iterrows():
            lines.append(f"- `{Path(str(r['run_dir'])).name}`: {r['status']}: {r.get('error')}")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return {"counts": counts, "table": table, "plots": plots}
