"""scripts/plot_runs.py: curves read from metrics.csv, the summary, the plot, and clear errors."""

from pathlib import Path

import pytest

from helpers import load_script


@pytest.fixture(scope="module")
def plot_runs():
    return load_script("scripts/plot_runs.py")


def write_metrics(run: Path, rows: list[tuple]) -> Path:
    """rows: (step, train/loss, val/accuracy) with None for an empty cell, as Lightning's CSV logger writes them."""
    run.mkdir(parents=True)
    lines = ["epoch,step,train/loss,val/accuracy"]
    lines += [f"0,{s},{'' if l is None else l},{'' if a is None else a}" for s, l, a in rows]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def test_summary_and_plot(plot_runs, tmp_path, capsys):
    a = write_metrics(tmp_path / "a", [(10, 3.0, None), (50, None, 0.2), (100, None, 0.6), (150, None, 0.5)])
    b = write_metrics(tmp_path / "b", [(100, None, 0.1), (50, None, 0.3)])
    out = tmp_path / "plots" / "curves.png"
    summary = plot_runs.main([f"first={a}", f"second={b}", "--out", str(out), "--reference", "published=0.9"])
    assert summary == [{"run": "first", "last_step": 150, "last": 0.5, "best": 0.6, "best_step": 100},
                       {"run": "second", "last_step": 100, "last": 0.1, "best": 0.3, "best_step": 50}]
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "first" in printed and "0.6000" in printed
    loss = plot_runs.main([f"a={a}", "--metric", "train/loss", "--minimise", "--out", str(out)])
    assert loss[0]["best"] == 3.0 and loss[0]["last_step"] == 10


@pytest.mark.parametrize("args,message", [(["nolabel"], "LABEL=RUN_DIR"),
                                          (["x={missing}"], "does not exist"),
                                          (["x={run}", "--metric", "val/acc"], "no column 'val/acc'.*val/accuracy"),
                                          (["x={run}", "--reference", "chance"], "LABEL=VALUE")])
def test_bad_input_is_one_line(plot_runs, tmp_path, args, message):
    run = write_metrics(tmp_path / "run", [(5, None, 0.5)])
    args = [a.format(missing=tmp_path / "nowhere", run=run) for a in args]
    with pytest.raises(SystemExit, match=message):
        plot_runs.main([*args, "--out", str(tmp_path / "p.png")])


def test_repeated_reference_flags_all_draw(plot_runs, tmp_path, monkeypatch):
    run = write_metrics(tmp_path / "run", [(5, None, 0.5)])
    drawn = []
    monkeypatch.setattr(plot_runs.plt.Axes, "axhline", lambda ax, y, **kw: drawn.append((kw["label"], y)))
    plot_runs.main([f"x={run}", "--reference", "chance=0.1", "--reference", "published=0.9", "baseline=0.5",
                    "--out", str(tmp_path / "p.png")])
    assert drawn == [("chance", 0.1), ("published", 0.9), ("baseline", 0.5)]
