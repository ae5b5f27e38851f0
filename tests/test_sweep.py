"""``python -m sweep``: reports, resuming, failure isolation and dry-run counts for every preset."""

import math

import pandas as pd
import pytest

from helpers import run_module
from seqicl.sweeps import engine


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    proc = run_module("sweep", "sweep=smoke", f"sweep.out_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, proc


def test_smoke_sweep_writes_its_report(smoke):
    out, proc = smoke
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4 and set(df["status"]) == {"completed"}
    for col in ("model.d_model", "optim.lr", "test.accuracy", "val.accuracy", "params", "state_size", "wall_time_s"):
        assert col in df, col
    report = (out / "report.md").read_text()
    assert "4 completed" in report and "smoke.png" in report
    assert (out / "smoke.png").stat().st_size > 1000
    assert "0 skipped" in proc.stdout


def test_best_run_is_selected_on_validation(smoke):
    out, _ = smoke
    df = pd.read_csv(out / "results.csv")
    report = (out / "report.md").read_text()
    for d, group in df.groupby("model.d_model"):
        best = group.sort_values("val.accuracy", ascending=False, kind="stable").iloc[0]
        assert f"| {d} | {best['test.accuracy']:.3f} |" in report


def test_second_invocation_skips_finished_runs(smoke):
    out, _ = smoke
    before = (out / "results.csv").read_text()
    proc = run_module("sweep", "sweep=smoke", f"sweep.out_dir={out}", timeout=300)
    assert proc.returncode == 0
    assert "4 already finished" in proc.stdout and "4 skipped" in proc.stdout
    assert pd.read_csv(out / "results.csv")[["test.accuracy"]].equals(pd.read_csv(__import__("io").StringIO(before))[["test.accuracy"]])


def test_a_failing_run_is_recorded_and_the_others_complete(tmp_path):
    preset = tmp_path / "failing.yaml"
    preset.write_text(
        "name: failing\n"
        "base: [trainer=debug, callbacks.progress_bar=none, data.val_size=32, data.test_size=32,\n"
        "       data.batch_size=8, model.n_layers=1, model.mixer.n_heads=4]\n"
        "grid:\n  model.d_model: [16, 18]\n"
        "report: {metric: test.accuracy, rows: [model.d_model]}\n")
    proc = run_module("sweep", f"sweep={preset}", f"sweep.out_dir={tmp_path / 'out'}", timeout=300)
    df = pd.read_csv(tmp_path / "out" / "results.csv").set_index("model.d_model")
    assert df.loc[16, "status"] == "completed" and df.loc[18, "status"] == "failed"
    assert "not divisible" in df.loc[18, "error"]
    assert "## Failures" in (tmp_path / "out" / "report.md").read_text()
    assert proc.returncode == 0


@pytest.mark.parametrize("name", engine.available())
def test_dry_run_counts_match_the_grid(name):
    protocol = engine.load_protocol(name)
    expected = math.prod(len(v) for v in protocol.grid.values())
    proc = run_module("sweep", f"sweep={name}", "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{expected} runs in sweep" in proc.stdout


def test_unknown_sweep_and_protocol_keys():
    proc = run_module("sweep", "sweep=smok", timeout=60)
    assert proc.returncode == 2 and "available sweeps: " in proc.stderr and "smoke" in proc.stderr
    proc = run_module("sweep", "sweep=smoke", "sweep.dryrun=true", "--dry-run", timeout=60)
    assert proc.returncode == 2 and "dryrun" in proc.stderr


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_other_launchers_run_the_grid(launcher, tmp_path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(
        "name: tiny\n"
        "base: [trainer=debug, trainer.max_steps=5, callbacks.progress_bar=none, data.val_size=32,\n"
        "       data.test_size=32, data.batch_size=8, model.n_layers=1, model.d_model=16]\n"
        "grid:\n  seed: [0, 1]\n"
        "report: {metric: test.accuracy, rows: [seed]}\n")
    proc = run_module("sweep", f"sweep={preset}", f"launcher={launcher}", f"sweep.out_dir={tmp_path / 'out'}",
                      timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(df["status"]) == ["completed", "completed"]
