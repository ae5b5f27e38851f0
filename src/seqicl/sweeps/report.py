"""Sweep reports: results.csv (one row per run), curves.json (per-position curves), report.md
(tables as in the papers) and PNG plots.

Model selection happens here, on validation metrics only: within each group of runs that
differ only in the ``select.over`` axes (e.g. the learning rate), the run with the best
``select.metric`` is kept and its test metrics reported.

The ``report`` section of a protocol:

- ``metric`` (default ``test.accuracy``) or ``metrics``: a list, one set of tables and plots each;
- ``rows``, ``columns``: grid axes or results columns (``task``, ``model``) of the tables;
  ``average_over``: axes averaged out (after selection); ``facet``: one table per value of a key;
- ``random_guess: true``: a "random guess" row (a column when there are no ``columns``) with each
  run's ``task.random_guess_accuracy()``, the task rebuilt from the run's own ``.hydra/config.yaml``;
- ``plot``: ``{x, series, facet, kind: line|bar, logx, reference}``; ``reference`` names metrics
  drawn as horizontal dashed lines (their mean over the runs of a panel): a list for every plot, or
  ``{metric: [references]}`` per plotted metric;
- ``curves``: ``{metric, reference, facet, series}``: a list-valued metric (``test.mse_by_k``) drawn
  against its position, with list-valued references (``test.baseline_least_squares_by_k``) dashed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from seqicl.sweeps.engine import Protocol

RANDOM_GUESS = "random guess"


def report_metrics(protocol: Protocol) -> list[str]:
    """The metrics of the report's tables and plots: ``report.metrics``, else ``[report.metric]``."""
    rep = protocol.report
    if rep.get("metrics"):
        return list(rep["metrics"])
    return [rep.get("metric", "test.accuracy")]


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


def _natural(value):
    """Sort key: numbers by value, text with its digit runs as numbers (``mqar_zoology_64`` before
    ``mqar_zoology_128``)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return (0, float(value), [])
    return (1, 0.0, [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(value))])


def _natural_key(label) -> list:
    """``_natural`` for a table label: one value, or a tuple of them (several rows or columns)."""
    return [_natural(v) for v in (label if isinstance(label, tuple) else (label,))]


def _facet_values(df: pd.DataFrame, facet: str | None) -> list:
    if not facet or facet not in df:
        return [None]
    return sorted(df[facet].dropna().unique(), key=_natural)


PANELS_PER_ROW = 3


def _short_override(override: str) -> str:
    """``model.mixer.n_kv_heads=1`` -> ``n_kv_heads=1``; ``layer@model.mixer=attention`` ->
    ``mixer=attention``; a deletion keeps its ``~``."""
    key, sep, value = override.partition("=")
    tilde = "~" if key.startswith("~") else ""
    return f"{tilde}{key.lstrip('~').split('@')[-1].split('.')[-1]}{sep}{value}"


def panel_titles(facet: str, values: list) -> list[str]:
    """Titles of a figure's panels, one per value of ``facet``, wrapped to a panel's width.

    A grouped grid axis's values (several overrides each, e.g. ``layer@model.mixer=attention
    model.mixer.n_heads=8``) keep only the overrides that tell them apart, with keys shortened to
    their last component (where that leaves them distinct); any other value is ``facet=value``.
    """
    if len(values) > 1 and all(isinstance(v, str) and "=" in v for v in values):
        parts = [v.split() for v in values]
        common = set.intersection(*(set(p) for p in parts))
        kept = [[o for o in p if o not in common] or p for p in parts]
        short = [" ".join(_short_override(o) for o in k) for k in kept]
        titles = short if len(set(short)) == len(short) else [" ".join(k) for k in kept]
    else:
        titles = [f"{facet}={_label(v)}" for v in values]
    return [textwrap.fill(t, width=42, break_long_words=False) for t in titles]


def _panels(plt, protocol: Protocol, facet: str | None, facets: list, ylabel: str, **subplots):
    """A figure with a panel per value in ``facets`` (``[None]``: one panel), ``PANELS_PER_ROW`` to
    a row, each titled, the first of each row labelled ``ylabel``: (figure, [(axes, value)])."""
    n = len(facets)
    cols = min(n, PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False, **subplots)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        fig.delaxes(ax)
    titles = panel_titles(facet, facets) if facets != [None] else [protocol.name]
    for i, (ax, title) in enumerate(zip(flat, titles)):
        ax.set_title(title, fontsize=9)
        if i % cols == 0:
            ax.set_ylabel(ylabel)
    return fig, list(zip(flat, facets))


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = [" / ".join(_label(c) for c in col) if isinstance(col, tuple) else _label(col) for col in df.columns]
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
        lines.append("| " + " / ".join(_label(i) for i in idx if i != "") + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def random_guess_accuracy(run_dir, cache: dict | None = None) -> float:
    """The accuracy of guessing at random on the task of a run, rebuilt from the run's own
    ``.hydra/config.yaml``; NaN when the run has no config or the task has no such accuracy."""
    from omegaconf import OmegaConf

    from seqicl.training.run import build_task

    if not isinstance(run_dir, (str, Path)) or not (Path(run_dir) / ".hydra" / "config.yaml").exists():
        return math.nan
    path = Path(run_dir) / ".hydra" / "config.yaml"
    task_cfg = OmegaConf.to_container(OmegaConf.load(path).task, resolve=True)
    key = json.dumps(task_cfg, sort_keys=True)
    if cache is not None and key in cache:
        return cache[key]
    try:
        value = float(build_task(task_cfg).random_guess_accuracy())
    except (NotImplementedError, AttributeError):
        value = math.nan
    if cache is not None:
        cache[key] = value
    return value


def _with_random_guess(best: pd.DataFrame) -> pd.DataFrame:
    cache: dict = {}
    out = best.copy()
    out[RANDOM_GUESS] = [random_guess_accuracy(d, cache) for d in out["run_dir"]]
    return out


def summary_table(best: pd.DataFrame, protocol: Protocol, metric: str | None = None) -> pd.DataFrame | None:
    """One table of ``metric`` (the report's first by default): rows x columns, averaged over
    ``average_over``; with ``random_guess``, a random-guess row (or column)."""
    rep = protocol.report
    metric = metric or report_metrics(protocol)[0]
    rows, cols = rep.get("rows", []), rep.get("columns", [])
    if best.empty or metric not in best or not rows:
        return None
    data = best.copy()
    average = rep.get("average_over", [])
    if average:
        keep = [k for k in [*rows, *cols] if k not in average]
        data = data.groupby(keep, dropna=False)[metric].mean().reset_index()
    if cols:
        table = data.pivot_table(index=rows, columns=cols, values=metric, aggfunc="mean")
        table = table[sorted(table.columns, key=_natural_key)]
    else:
        table = data.groupby(rows, dropna=False)[metric].mean().to_frame(metric)
    table = table.loc[sorted(table.index, key=_natural_key)]
    if rep.get("random_guess"):
        guess = _with_random_guess(best)
        if cols:
            row = guess.groupby(cols, dropna=False)[RANDOM_GUESS].mean().reindex(table.columns)
            label = RANDOM_GUESS if len(rows) == 1 else (RANDOM_GUESS, *[""] * (len(rows) - 1))
            extra = pd.DataFrame([row.to_numpy()], columns=table.columns,
                                 index=pd.Index([label]) if len(rows) == 1 else pd.MultiIndex.from_tuples([label]))
            extra.index.names = table.index.names
            table = pd.concat([table, extra])
        else:
            table[RANDOM_GUESS] = guess.groupby(rows, dropna=False)[RANDOM_GUESS].mean().reindex(table.index)
    return table


def summary_tables(best: pd.DataFrame, protocol: Protocol, metric: str) -> list[tuple[str | None, pd.DataFrame]]:
    """The tables of ``metric``: one per value of ``report.facet`` (titled ``facet=value``), or one."""
    facet = protocol.report.get("facet")
    out = []
    for value in _facet_values(best, facet):
        sub = best if value is None else best[best[facet] == value]
        table = summary_table(sub, protocol, metric)
        if table is not None:
            out.append((None if value is None else f"{facet}={_label(value)}", table))
    return out


def _references(spec: dict, metric: str) -> list[str]:
    ref = spec.get("reference") or []
    return list(ref.get(metric, [])) if isinstance(ref, dict) else list(ref)


def _reference_values(df: pd.DataFrame, refs: list[str]) -> dict[str, float]:
    """Each reference metric's mean over the runs of ``df`` (those that report it)."""
    values = {}
    for ref in refs:
        if ref in df:
            v = pd.to_numeric(df[ref], errors="coerce").mean()
            if not math.isnan(v):
                values[ref] = float(v)
    return values


REFERENCE_STYLES = ["--", ":", "-.", (0, (5, 2, 1, 2))]


def _plot_path(protocol: Protocol, out: Path, metric: str, suffix: str = "") -> Path:
    several = len(report_metrics(protocol)) > 1
    stem = protocol.name + (f"_{metric.replace('.', '_')}" if several else "") + suffix
    return out / f"{stem}.png"


def plot(best: pd.DataFrame, protocol: Protocol, out: Path) -> list[Path]:
    """One figure per report metric: ``plot.x`` against the metric, a panel per ``plot.facet``
    value, a line (or bar) per ``plot.series`` value, reference metrics as dashed lines."""
    spec = protocol.report.get("plot")
    if not spec or best.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    x, series, facet = spec["x"], spec.get("series"), spec.get("facet")
    for metric in report_metrics(protocol):
        if metric not in best:
            continue
        refs = _references(spec, metric)
        fig, panels = _panels(plt, protocol, facet, _facet_values(best, facet), metric, sharey=True)
        for ax, fv in panels:
            sub = best if fv is None else best[best[facet] == fv]
            groups = sub.groupby(series, dropna=False) if series else [(None, sub)]
            for name, g in groups:
                g = g.groupby(x)[metric].mean()
                g = g.reindex(sorted(g.index, key=_natural))
                if spec.get("kind", "line") == "bar":
                    ax.bar([_label(v) for v in g.index], g.values, label=None if name is None else _label(name),
                           alpha=0.7)
                else:
                    ax.plot(g.index, g.values, marker="o", label=None if name is None else _label(name))
            for i, (ref, value) in enumerate(_reference_values(sub, refs).items()):
                ax.axhline(value, color="0.3", linewidth=1, linestyle=REFERENCE_STYLES[i % len(REFERENCE_STYLES)],
                           label=ref)
            if pd.api.types.is_numeric_dtype(sub[x]):
                if spec.get("logx"):
                    ax.set_xscale("log", base=2)
            elif max((len(_label(v)) for v in sub[x].unique()), default=0) > 6:
                ax.tick_params(axis="x", labelrotation=25)
                for label in ax.get_xticklabels():
                    label.set_horizontalalignment("right")
            ax.set_xlabel(x)
            ax.grid(alpha=0.3)
        if series or refs:
            panels[-1][0].legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = _plot_path(protocol, out, metric)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _mean_curve(values) -> np.ndarray | None:
    """The element-wise mean of list-valued metrics (``None`` entries are missing points)."""
    curves = [np.array([np.nan if v is None else v for v in c], dtype=float) for c in values if isinstance(c, list)]
    if not curves:
        return None
    length = max(len(c) for c in curves)
    stacked = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        stacked[i, :len(c)] = c
    with np.errstate(all="ignore"):
        counts = np.sum(~np.isnan(stacked), axis=0)
        return np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)


def curve_limits(model_curves: list, reference_curves: list) -> tuple[float, float] | None:
    """y-limits that keep the models' curves readable when a reference curve rises far above
    them (e.g. averaging with one in-context example): up to 1.5 times the models' maximum;
    None where the references stay within that."""
    top = max((np.nanmax(c) for c in model_curves if np.isfinite(c).any()), default=np.nan)
    ref_top = max((np.nanmax(c) for c in reference_curves if np.isfinite(c).any()), default=np.nan)
    if not (np.isfinite(top) and top > 0 and ref_top > 1.5 * top):
        return None
    low = min(np.nanmin(c) for c in model_curves + reference_curves if np.isfinite(c).any())
    return min(0.0, float(low)), 1.5 * float(top)


def plot_curves(best: pd.DataFrame, protocol: Protocol, out: Path) -> list[Path]:
    """``curves.metric`` (a list per run) against its position k, a panel per ``curves.facet``
    value, a line per ``curves.series`` value; ``curves.reference`` curves dashed."""
    spec = protocol.report.get("curves")
    if not spec or best.empty or spec["metric"] not in best:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, series, facet = spec["metric"], spec.get("series"), spec.get("facet")
    refs = list(spec.get("reference") or [])
    fig, panels = _panels(plt, protocol, facet, _facet_values(best, facet), metric)
    for ax, fv in panels:
        sub = best if fv is None else best[best[facet] == fv]
        groups = sub.groupby(series, dropna=False) if series else [(None, sub)]
        model_curves, reference_curves = [], []
        for name, g in groups:
            curve = _mean_curve(g[metric])
            if curve is not None:
                ax.plot(np.arange(len(curve)), curve, label=metric if name is None else _label(name))
                model_curves.append(curve)
        for i, ref in enumerate(refs):
            curve = _mean_curve(sub[ref]) if ref in sub else None
            if curve is not None:
                ax.plot(np.arange(len(curve)), curve, color="0.3", linewidth=1,
                        linestyle=REFERENCE_STYLES[i % len(REFERENCE_STYLES)], label=ref)
                reference_curves.append(curve)
        limits = curve_limits(model_curves, reference_curves)
        if limits is not None:
            ax.set_ylim(*limits)
        ax.set_xlabel("k (in-context examples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = out / f"{protocol.name}_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _list_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if df[c].map(lambda v: isinstance(v, list)).any()]


def write_curves(df: pd.DataFrame, protocol: Protocol, path: Path) -> None:
    """curves.json: per run, its grid values, status and every list-valued metric."""
    lists = _list_columns(df)
    keys = [*protocol.grid, "run_dir", "status"]
    records = [{k: row[k] for k in [*keys, *lists] if isinstance(row[k], list) or not pd.isna(row[k])}
               for _, row in df.iterrows()]
    path.write_text(json.dumps(records, indent=1))


def _hidden_axes(best: pd.DataFrame, protocol: Protocol, keys: list[str]) -> list[str]:
    """The grid axes (other than ``report.average_over`` and ``select.over``) whose values differ
    between selected runs that ``keys`` (a table's rows, columns and facet, or a plot's) put in the
    same cell: shown as they are, those runs would be averaged without a word."""
    keys = [k for k in keys if k and k in best]
    if best.empty or not keys:
        return []
    average = {*protocol.report.get("average_over", []), *protocol.select.get("over", [])}
    groups = best.groupby(keys, dropna=False)
    return [a for a in protocol.grid if a in best and a not in keys and a not in average
            and (groups[a].nunique(dropna=False) > 1).any()]


def _shown_axes(best: pd.DataFrame, protocol: Protocol) -> tuple[Protocol, list[str]]:
    """The protocol with the report's hidden axes shown: added to the tables' rows, and as the
    plot's facet where it has none and one axis is hidden from it; and a sentence saying so."""
    rep = protocol.report
    notes = []
    table_hidden = _hidden_axes(best, protocol, [*rep.get("rows", []), *rep.get("columns", []), rep.get("facet")])
    report = dict(rep)
    if table_hidden and rep.get("rows"):
        report["rows"] = [*rep["rows"], *table_hidden]
        notes.append(f"The tables also have a row per value of {', '.join(table_hidden)}, "
                     "which the protocol's report does not name.")
    spec = rep.get("plot")
    if spec:
        plot_hidden = _hidden_axes(best, protocol, [spec.get("x"), spec.get("series"), spec.get("facet")])
        if len(plot_hidden) == 1 and not spec.get("facet"):
            report["plot"] = {**spec, "facet": plot_hidden[0]}
            notes.append(f"The plot has a panel per value of {plot_hidden[0]}.")
        elif plot_hidden:
            notes.append(f"The plot averages over {', '.join(plot_hidden)}.")
    return dataclasses.replace(protocol, report=report), notes


def write_report(rows: list[dict], protocol: Protocol, skipped: int = 0) -> dict:
    """Write results.csv, curves.json (when runs report list-valued metrics), report.md and plots
    into the sweep directory; return the counts, the tables (per metric, titled) and the plots."""
    out = protocol.out_dir
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    lists = _list_columns(df)
    df.drop(columns=lists).to_csv(out / "results.csv", index=False)
    if lists:
        write_curves(df, protocol, out / "curves.json")
    counts = {s: int((df["status"] == s).sum()) for s in ("completed", "failed", "diverged", "missing")}
    counts["total"] = len(df)
    counts["skipped"] = skipped
    best = select_best(df, protocol)
    protocol, notes = _shown_axes(best, protocol)
    metrics = report_metrics(protocol)
    tables = {metric: summary_tables(best, protocol, metric) for metric in metrics}
    plots = plot(best, protocol, out)
    curves = plot_curves(best, protocol, out)
    lines = [f"# Sweep `{protocol.name}`", ""]
    if protocol.description:
        lines += [protocol.description.strip(), ""]
    lines += [f"Runs: {counts['total']} ({counts['completed']} completed, {counts['failed']} failed, "
              f"{counts['diverged']} diverged, {counts['missing']} missing; {skipped} were already finished "
              "and skipped).", ""]
    sel = protocol.select
    shown = ", ".join(f"`{m}`" for m in metrics)
    if sel.get("over"):
        lines += [f"Best over {', '.join(sel['over'])} chosen on `{sel.get('metric', 'val.accuracy')}` "
                  f"(validation); the tables show {shown}.", ""]
    if protocol.report.get("average_over"):
        lines += [f"Tables average over {', '.join(protocol.report['average_over'])}.", ""]
    if notes:
        lines += [" ".join(notes), ""]
    spec = protocol.report.get("plot") or {}
    for metric in metrics:
        if len(metrics) > 1:
            lines += [f"## `{metric}`", ""]
        for title, table in tables[metric]:
            if title is not None:
                lines += [f"### {title}", ""]
            lines += [markdown_table(table), ""]
        refs = _reference_values(best, _references(spec, metric))
        if refs:
            lines += ["Reference lines (mean over the runs shown): "
                      + ", ".join(f"`{k}` {v:.3f}" for k, v in refs.items()) + ".", ""]
        for p in plots:
            if p == _plot_path(protocol, out, metric):
                lines += [f"![{p.stem}]({p.name})", ""]
    for p in curves:
        lines += [f"![{p.stem}]({p.name})", ""]
    bad = df[df["status"].isin(["failed", "diverged"])]
    if not bad.empty:
        lines += ["## Failures", ""]
        for _, r in bad.iterrows():
            lines.append(f"- `{Path(str(r['run_dir'])).name}`: {r['status']}: {r.get('error')}")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return {"counts": counts, "tables": tables, "plots": [*plots, *curves]}
