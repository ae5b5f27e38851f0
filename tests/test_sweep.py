"""``python -m sweep``: reports, resuming, failure isolation, dry-run counts for every preset, axes of
override lists and the report's extensions (random guess, reference lines, several metrics, curves)."""

import json
import math
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import ROOT, run_module
from seqicl.errors import ConfigError
from seqicl.sweeps import engine
from seqicl.sweeps.report import curve_limits, panel_titles, write_report


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


# ---------------------------------------------------------------------------------------------
# grid axes whose values are lists of overrides


def write_protocol(path, text):
    path.write_text(text)
    return engine.load_protocol(str(path))


SETTINGS = ("name: bundles\n"
            "base: [trainer=debug, trainer.max_steps=5, callbacks.progress_bar=none, data.val_size=32,\n"
            "       data.test_size=32, data.batch_size=8, model.n_layers=1, model.d_model=16]\n"
            "grid:\n"
            "  setting:\n"
            "    - [task.num_kv_pairs=2]\n"
            "    - [task.num_kv_pairs=2, task.seq_len=24]\n"
            "  seed: [0, 1]\n"
            "select: {over: [seed], metric: val.accuracy}\n"
            "report: {metric: test.accuracy, rows: [setting]}\n")


def test_override_list_axis_expands_into_one_multirun_per_value(tmp_path):
    protocol = write_protocol(tmp_path / "bundles.yaml", SETTINGS)
    assert engine.override_axes(protocol.grid) == ["setting"]
    runs = engine.expand(protocol)
    assert len(runs) == 4
    assert engine.run_overrides(protocol, runs[-1]) == ["task.num_kv_pairs=2", "task.seq_len=24", "seed=1"]
    commands = engine.train_commands(protocol, ["trainer.max_steps=3"], [])
    assert len(commands) == 2
    assert "task.seq_len=24" not in commands[0] and "task.seq_len=24" in commands[1]
    for cmd in commands:
        assert "task.num_kv_pairs=2" in cmd and "seed=0,1" in cmd
        assert cmd.index("trainer.max_steps=3") < cmd.index("task.num_kv_pairs=2")
        assert cmd[-1] == "hydra.job.config.override_dirname.exclude_keys=[callbacks.progress_bar,data.batch_size," \
                          "data.test_size,data.val_size,model.d_model,model.n_layers,trainer,trainer.max_steps]"
    assert [r["setting"] for r in engine.collect(protocol)][:2] == ["task.num_kv_pairs=2"] * 2


@pytest.mark.parametrize("launcher,at_once", [([], 1), (["hydra.launcher.n_jobs=2"], 1),
                                             (["hydra.launcher.n_jobs=4"], 2), (["hydra.launcher.n_jobs=9"], 3)])
def test_multiruns_of_override_lists_run_side_by_side_within_n_jobs(tmp_path, monkeypatch, launcher, at_once):
    """Each setting is its own multirun of 2 runs (seed 0, 1): n_jobs=4 runs two settings at once."""
    protocol = write_protocol(tmp_path / "bundles.yaml", SETTINGS.replace(
        "    - [task.num_kv_pairs=2, task.seq_len=24]\n",
        "    - [task.num_kv_pairs=2, task.seq_len=24]\n    - [task.num_kv_pairs=3]\n"))
    running, most = [], []
    lock = threading.Lock()

    def fake_run(cmd, cwd):
        with lock:
            running.append(cmd)
            most.append(len(running))
        time.sleep(0.2)
        with lock:
            running.remove(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(engine.subprocess, "run", fake_run)
    assert engine.launch(protocol, [], launcher) == 0
    assert len(most) == 3 and max(most) == at_once


def test_dry_run_lists_the_overrides_of_each_setting(tmp_path):
    (tmp_path / "bundles.yaml").write_text(SETTINGS)
    proc = run_module("sweep", f"sweep={tmp_path / 'bundles.yaml'}", "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("every run: ")
    assert lines[1:5] == ["task.num_kv_pairs=2 seed=0", "task.num_kv_pairs=2 seed=1",
                         "task.num_kv_pairs=2 task.seq_len=24 seed=0", "task.num_kv_pairs=2 task.seq_len=24 seed=1"]
    assert "4 runs in sweep bundles" in proc.stdout


@pytest.mark.parametrize("grid,message", [
    ("  s: [[task.seq_len=8], 3]\n", "mixes lists of overrides"),
    ("  s: [[task.seq_len=8, seed=1], [seed=1, task.seq_len=8]]\n", "the same overrides twice"),
    ("  s: [[seed=1]]\n  seed: [0, 1]\n", "also an axis"),
])
def test_override_list_axis_errors(tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):
        write_protocol(tmp_path / "bad.yaml", "name: bad\ngrid:\n" + grid)


def fake_run(root, name, overrides, results, config=None):
    """A finished run directory as a sweep leaves it: .hydra/overrides.yaml, results.json."""
    run = root / "runs" / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if config is not None:
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "results.json").write_text(json.dumps({"status": "completed", **results}))
    return run


def test_collect_finds_the_most_specific_setting_of_each_run(tmp_path):
    protocol = write_protocol(tmp_path / "bundles.yaml", SETTINGS + f"out_dir: {tmp_path / 'out'}\n")
    base = ["trainer=debug", "trainer.max_steps=5", "task.seq_len=32"]
    fake_run(protocol.out_dir, "a", [*base, "task.num_kv_pairs=2", "seed=0"], {"test": {"accuracy": 0.25}})
    fake_run(protocol.out_dir, "b", [*base, "task.num_kv_pairs=2", "task.seq_len=24", "seed=1"],
             {"test": {"accuracy": 0.75, "accuracy_by_k": [0.5, None]}})
    rows = {(r["setting"], r["seed"]): r for r in engine.collect(protocol)}
    assert rows[("task.num_kv_pairs=2", 0)]["test.accuracy"] == 0.25
    assert rows[("task.num_kv_pairs=2 task.seq_len=24", 1)]["test.accuracy"] == 0.75
    assert rows[("task.num_kv_pairs=2 task.seq_len=24", 1)]["test.accuracy_by_k"] == [0.5, None]
    assert rows[("task.num_kv_pairs=2", 1)]["status"] == "missing"


def test_a_grid_axis_named_like_a_results_field_keeps_its_values(tmp_path):
    protocol = write_protocol(tmp_path / "tasks.yaml", "name: tasks\ngrid:\n  task: [mqar_zoology_64, mqar_zoology_128]\n"
                              "report: {rows: [model], columns: [task]}\n" f"out_dir: {tmp_path / 'out'}\n")
    for task, accuracy in (("mqar_zoology_64", 0.9), ("mqar_zoology_128", 0.4)):
        fake_run(protocol.out_dir, task, [f"task={task}"],
                 {"task": "mqar", "model": "h3", "val": {"accuracy": accuracy}, "test": {"accuracy": accuracy}})
    rows = engine.collect(protocol)
    assert [r["task"] for r in rows] == ["mqar_zoology_64", "mqar_zoology_128"] and rows[0]["model"] == "h3"
    [(_, table)] = write_report(rows, protocol)["tables"]["test.accuracy"]
    assert table.loc["h3"].tolist() == [0.9, 0.4]


def test_an_axis_the_report_does_not_name_gets_rows_and_panels_instead_of_being_averaged(tmp_path):
    grid = {"experiment": ["a", "b"], "task": ["t64", "t128"], "optim.lr": [0.1, 0.01]}
    rows = [{"experiment": e, "task": t, "optim.lr": lr, "status": "completed", "run_dir": None,
             "val.accuracy": lr, "test.accuracy": (0.9 if t == "t64" else 0.3) + lr}
            for e in grid["experiment"] for t in grid["task"] for lr in grid["optim.lr"]]
    protocol = protocol_for(tmp_path, grid, {"rows": ["experiment"], "plot": {"x": "experiment"}},
                            {"over": ["optim.lr"]})
    report = write_report(rows, protocol)
    [(_, table)] = report["tables"]["test.accuracy"]
    assert table.index.tolist() == [("a", "t64"), ("a", "t128"), ("b", "t64"), ("b", "t128")]
    assert table["test.accuracy"].round(3).tolist() == [1.0, 0.4, 1.0, 0.4]
    md = (protocol.out_dir / "report.md").read_text()
    [note] = [line for line in md.splitlines() if "which the protocol's report does not name" in line]
    assert "a row per value of task," in note and "a panel per value of task." in note and "optim.lr" not in note
    protocol.report = {"rows": ["experiment"], "average_over": ["task"]}
    [(_, table)] = write_report(rows, protocol)["tables"]["test.accuracy"]
    assert table["test.accuracy"].round(3).tolist() == [0.7, 0.7]


def test_override_list_sweep_runs_and_resumes(tmp_path):
    (tmp_path / "bundles.yaml").write_text(SETTINGS.replace("  seed: [0, 1]\n", "  seed: [0]\n"))
    args = ("sweep", f"sweep={tmp_path / 'bundles.yaml'}", f"sweep.out_dir={tmp_path / 'out'}")
    proc = run_module(*args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(df["status"]) == ["completed", "completed"]
    assert list(df["setting"]) == ["task.num_kv_pairs=2", "task.num_kv_pairs=2 task.seq_len=24"]
    assert len((tmp_path / "out" / "command.txt").read_text().splitlines()) == 2
    proc = run_module(*args, timeout=300)
    assert proc.returncode == 0 and "2 already finished" in proc.stdout


def test_mad_settings_compose_and_keep_mads_epochs():
    from hydra import compose, initialize_config_dir

    from seqicl.training.config import validate
    from seqicl.training.run import build_task

    protocol = engine.load_protocol("mad")
    settings = protocol.grid["setting"]
    assert len(settings) == 66
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for overrides in settings:
            c = validate(compose("train", overrides=[*protocol.base, *overrides, "paths.output_dir=unused"]))
            task = build_task(c["task"])
            assert c["data"]["train_size"] == task.num_train_examples
            assert c["trainer"]["max_steps"] * c["data"]["batch_size"] == 200 * task.num_train_examples, overrides


# ---------------------------------------------------------------------------------------------
# report extensions


def protocol_for(tmp_path, grid, report, select=None):
    return engine.Protocol(name="t", description="", base=[], grid=grid, select=select or {}, report=report,
                           out_dir=tmp_path / "out")


def test_random_guess_row_comes_from_each_runs_task_config(tmp_path):
    import seqicl.tasks as tasks

    grid = {"experiment": ["a/x", "a/y", "b/x", "b/y"]}
    protocol = protocol_for(tmp_path, grid, {"metric": "test.accuracy", "rows": ["model"], "columns": ["task"],
                                             "random_guess": True})
    task_cfgs = {"associative_recall": {"name": "associative_recall", "vocab_size": 12, "context_len": 16},
                 "induction_head": {"name": "induction_head", "vocab_size": 16, "context_len": 32}}
    rows = []
    for i, (exp, task, model) in enumerate([("a/x", "associative_recall", "x"), ("a/y", "associative_recall", "y"),
                                            ("b/x", "induction_head", "x"), ("b/y", "induction_head", "y")]):
        run = fake_run(protocol.out_dir, str(i), [f"experiment={exp}"], {},
                       config={"task": task_cfgs[task], "model": {"name": model}})
        rows.append({"experiment": exp, "status": "completed", "run_dir": str(run), "task": task, "model": model,
                     "val.accuracy": 0.5, "test.accuracy": 0.1 * (i + 1)})
    report = write_report(rows, protocol)
    guess = {n: tasks.build(**c).random_guess_accuracy() for n, c in task_cfgs.items()}
    assert guess["associative_recall"] == 0.2
    md = (protocol.out_dir / "report.md").read_text()
    assert "| model | associative_recall | induction_head |" in md
    assert "| x | 0.100 | 0.300 |" in md
    assert f"| random guess | {guess['associative_recall']:.3f} | {guess['induction_head']:.3f} |" in md
    (_, table), = report["tables"]["test.accuracy"]
    assert table.loc["random guess", "induction_head"] == pytest.approx(guess["induction_head"])

    protocol.report = {"metric": "test.accuracy", "rows": ["task"], "average_over": ["experiment"], "random_guess": True}
    write_report(rows, protocol)
    md = (protocol.out_dir / "report.md").read_text()
    assert "| task | test.accuracy | random guess |" in md
    assert f"| induction_head | 0.350 | {guess['induction_head']:.3f} |" in md


def test_random_guess_is_nan_without_a_config_or_for_regression(tmp_path):
    from seqicl.sweeps.report import random_guess_accuracy

    assert math.isnan(random_guess_accuracy(None)) and math.isnan(random_guess_accuracy(str(tmp_path)))
    run = fake_run(tmp_path, "r", [], {}, config={"task": {"name": "linear_regression", "n_dims": 4,
                                                            "n_points": 8, "curriculum": None}})
    assert math.isnan(random_guess_accuracy(str(run)))


def dfa_rows(n_automata=(1000, 4000)):
    rows = []
    for model in ("lstm", "transformer"):
        for i, n in enumerate(n_automata):
            rows.append({"experiment": f"dfa/{model}", "task.num_train_automata": n, "status": "completed",
                         "run_dir": None, "model": model, "val.dfa_accuracy": 0.5,
                         "test.dfa_accuracy": 0.6 + 0.1 * i, "test.tvd": 0.4 - 0.1 * i,
                         "test.ngram2_dfa_accuracy": 0.5 + 0.1 * i, "test.ngram2_tvd": 0.3})
    return rows


def test_several_metrics_give_several_tables_and_plots_with_reference_lines(tmp_path):
    grid = {"experiment": ["dfa/lstm", "dfa/transformer"], "task.num_train_automata": [1000, 4000]}
    report_spec = {"metrics": ["test.dfa_accuracy", "test.tvd"], "rows": ["model"],
                   "columns": ["task.num_train_automata"],
                   "plot": {"x": "task.num_train_automata", "series": "model", "logx": True,
                            "reference": {"test.dfa_accuracy": ["test.ngram2_dfa_accuracy"],
                                          "test.tvd": ["test.ngram2_tvd"]}}}
    protocol = protocol_for(tmp_path, grid, report_spec, {"metric": "val.dfa_accuracy"})
    report = write_report(dfa_rows(), protocol)
    out = protocol.out_dir
    assert [p.name for p in report["plots"]] == ["t_test_dfa_accuracy.png", "t_test_tvd.png"]
    assert all(p.stat().st_size > 1000 for p in report["plots"])
    md = (out / "report.md").read_text()
    assert "## `test.dfa_accuracy`" in md and "## `test.tvd`" in md
    assert "| lstm | 0.600 | 0.700 |" in md and "| lstm | 0.400 | 0.300 |" in md
    assert "`test.ngram2_dfa_accuracy` 0.550" in md and "`test.ngram2_tvd` 0.300" in md
    assert md.index("t_test_dfa_accuracy.png") < md.index("## `test.tvd`") < md.index("t_test_tvd.png")

    protocol.report = {**report_spec, "plot": {**report_spec["plot"], "reference": ["test.ngram2_tvd"]}}
    md = (write_report(dfa_rows(), protocol), (out / "report.md").read_text())[1]
    assert md.count("`test.ngram2_tvd` 0.300") == 2


def test_facet_gives_one_table_per_value_in_natural_order(tmp_path):
    grid = {"task": ["mqar_zoology_64", "mqar_zoology_128"], "model.d_model": [64, 128]}
    rows = [{"task": t, "model.d_model": d, "status": "completed", "run_dir": None, "val.accuracy": 1.0,
             "test.accuracy": d / 1000 + (0.5 if t.endswith("128") else 0.0), "experiment": "e"}
            for t in grid["task"] for d in grid["model.d_model"]]
    protocol = protocol_for(tmp_path, grid, {"rows": ["experiment"], "columns": ["model.d_model"], "facet": "task"})
    report = write_report(rows, protocol)
    assert [title for title, _ in report["tables"]["test.accuracy"]] == ["task=mqar_zoology_64",
                                                                         "task=mqar_zoology_128"]
    md = (protocol.out_dir / "report.md").read_text()
    assert md.index("### task=mqar_zoology_64\n\n| experiment | 64 | 128 |\n|---|---|---|\n| e | 0.064 | 0.128 |") \
        < md.index("### task=mqar_zoology_128\n\n| experiment | 64 | 128 |\n|---|---|---|\n| e | 0.564 | 0.628 |")


def test_average_over_gives_the_mean_of_the_best_runs(tmp_path):
    grid = {"setting": [["experiment=mad/a"], ["experiment=mad/a", "task.seq_len=9"], ["experiment=mad/b"]],
            "optim.lr": [0.1, 0.2]}
    rows = []
    for setting, task, accs in [("experiment=mad/a", "a", (0.2, 0.4)),
                                ("experiment=mad/a task.seq_len=9", "a", (0.8, 0.6)),
                                ("experiment=mad/b", "b", (0.3, 0.1))]:
        for lr, acc in zip(grid["optim.lr"], accs):
            rows.append({"setting": setting, "optim.lr": lr, "task": task, "status": "completed", "run_dir": None,
                         "val.accuracy": acc, "test.accuracy": acc})
    protocol = protocol_for(tmp_path, grid, {"rows": ["task"], "average_over": ["setting"],
                                             "plot": {"x": "task", "kind": "bar"}},
                            {"over": ["optim.lr"], "metric": "val.accuracy"})
    report = write_report(rows, protocol)
    (_, table), = report["tables"]["test.accuracy"]
    assert table.loc["a", "test.accuracy"] == pytest.approx(0.6) and table.loc["b", "test.accuracy"] == 0.3
    assert report["plots"][0].name == "t.png"


def test_panel_titles_keep_the_overrides_that_tell_grouped_values_apart():
    values = ["layer@model.mixer=attention model.mixer.n_heads=8 model.mixer.positions=none",
              "layer@model.mixer=attention model.mixer.n_heads=8 model.mixer.positions=none model.mixer.n_kv_heads=1",
              "layer@model.mixer=favor model.mixer.n_heads=8 ~model.mixer.positions=none"]
    assert panel_titles("attention", values) == ["mixer=attention positions=none",
                                                 "mixer=attention positions=none\nn_kv_heads=1",
                                                 "mixer=favor ~positions=none"]
    # Shortened keys that would make two titles equal stay whole.
    assert panel_titles("s", ["model.mixer.d_state=4", "model.state_mixer.d_state=4"]) == \
        ["model.mixer.d_state=4", "model.state_mixer.d_state=4"]
    # Long titles wrap at spaces, never inside an override.
    wrapped = panel_titles("a", ["layer@model.mixer=sliding_window_attention model.mixer.window_size=16",
                                 "layer@model.mixer=attention"])
    assert wrapped[0] == "mixer=sliding_window_attention\nwindow_size=16"
    assert panel_titles("d_model", [64, 0.5]) == ["d_model=64", "d_model=0.5"]
    assert panel_titles("layer", ["a" * 50]) == ["layer=" + "a" * 50]


def test_list_metrics_go_to_curves_json_and_the_curves_plot(tmp_path):
    grid = {"task": ["linear_regression", "sparse_linear_regression"]}
    rows = [{"task": t, "status": "completed", "run_dir": None, "val.mse": 0.1, "test.mse": 0.2,
             "test.mse_by_k": [1.0, 0.5, None], "test.baseline_least_squares_by_k": [1.0, 0.2, 0.0],
             **({"test.baseline_lasso_by_k": [0.9, 0.1, 0.0]} if t.startswith("sparse") else {})} for t in grid["task"]]
    rows.append({"task": "noisy_linear_regression", "status": "missing", "run_dir": None})
    grid["task"].append("noisy_linear_regression")
    protocol = protocol_for(tmp_path, grid, {"metric": "test.mse", "rows": ["task"],
                                             "curves": {"metric": "test.mse_by_k", "facet": "task",
                                                        "reference": ["test.baseline_least_squares_by_k",
                                                                      "test.baseline_lasso_by_k"]}},
                            {"metric": "val.mse", "mode": "min"})
    report = write_report(rows, protocol)
    out = protocol.out_dir
    df = pd.read_csv(out / "results.csv")
    assert "test.mse" in df and not any(c.endswith("_by_k") for c in df)
    curves = json.loads((out / "curves.json").read_text())
    assert len(curves) == 3 and curves[0]["task"] == "linear_regression"
    assert curves[0]["test.mse_by_k"] == [1.0, 0.5, None] and "test.baseline_lasso_by_k" not in curves[0]
    assert curves[2] == {"task": "noisy_linear_regression", "status": "missing"}
    assert (out / "t_curves.png").stat().st_size > 1000 and out / "t_curves.png" in report["plots"]
    assert "![t_curves](t_curves.png)" in (out / "report.md").read_text()


@pytest.mark.parametrize("text,message", [
    ("report: {metrc: test.accuracy}\n", "unknown key report.metrc"),
    ("report: {metric: a, metrics: [b]}\n", "not both"),
    ("report: {plot: {x: seed, referense: [a]}}\n", "unknown key report.plot.referense"),
    ("report: {curves: {facet: task}}\n", "report.curves needs 'metric'"),
    ("select: {overr: [seed]}\n", "unknown key select.overr"),
])
def test_report_sections_are_strict(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        write_protocol(tmp_path / "bad.yaml", "name: bad\ngrid:\n  seed: [0]\n" + text)


def test_curve_limits_clip_only_a_reference_far_above_the_models():
    model = [np.array([1.0, 0.8, 0.6]), np.array([0.9, np.nan, 0.5])]
    assert curve_limits(model, [np.array([1.0, 0.5, 0.0])]) is None
    assert curve_limits(model, [np.array([21.0, 3.0, 0.5]), np.array([1.0, -0.2, 0.0])]) == (-0.2, 1.5)
    assert curve_limits([], [np.array([5.0])]) is None


def test_a_dotted_grid_axis_can_be_narrowed_from_the_command_line():
    protocol = engine.load_protocol("zoology_mqar_short", ["grid.model.d_model=[64]", "grid.experiment=[a]"])
    assert protocol.grid["model.d_model"] == [64] and protocol.grid["experiment"] == ["a"]
    with pytest.raises(ConfigError, match=r"add it with \+sweep.grid.model.n_layers"):
        engine.load_protocol("zoology_mqar_short", ["grid.model.n_layers=[1]"])


def test_grid_axes_can_be_added_and_removed_from_the_command_line():
    protocol = engine.load_protocol("zoology_mqar_short", ["+grid.task=[mqar_zoology_64,mqar_zoology_128]",
                                                           "~grid.model.d_model"])
    assert protocol.grid["task"] == ["mqar_zoology_64", "mqar_zoology_128"] and "model.d_model" not in protocol.grid
    assert len(engine.expand(protocol)) == 2 * len(protocol.grid["experiment"])
    for bad, message in (("+grid.experiment=[a]", r"replace it with sweep.grid.experiment"),
                         ("~grid.seed", "no grid axis 'seed'"), ("+out_dir=/tmp/x", "only grid axes")):
        with pytest.raises(ConfigError, match=message):
            engine.load_protocol("zoology_mqar_short", [bad])


def test_added_axes_reach_the_runs_and_the_dry_run_shows_every_override():
    proc = run_module("sweep", "sweep=zoology_mqar_short", "+sweep.grid.task=[mqar_zoology_64]",
                      "sweep.grid.model.d_model=[64]", "sweep.grid.experiment=[synthetics/mqar/h3]",
                      "trainer.max_steps=7", "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "trainer.max_steps=7" in lines[0] and "task=mqar_zoology_256" in lines[0]
    assert lines[1].split() == ["experiment=synthetics/mqar/h3", "model.d_model=64", "task=mqar_zoology_64"]


def test_a_base_override_of_a_grid_key_gives_way_to_the_axis_and_the_run_names_keep_it():
    protocol = engine.load_protocol("zoology_mqar_short", ["+grid.task=[mqar_zoology_64,mqar_zoology_128]"])
    [cmd] = engine.train_commands(protocol, [], [])
    assert "task=mqar_zoology_256" not in cmd and "task=mqar_zoology_64,mqar_zoology_128" in cmd
    excluded = cmd[-1].partition("=[")[2].rstrip("]").split(",")
    assert "task" not in excluded and "optim.lr" in excluded


def test_a_command_line_override_of_a_grid_key_is_an_error(tmp_path):
    protocol = engine.load_protocol("zoology_mqar_short")
    with pytest.raises(ConfigError, match=r"varies model.d_model .*sweep.grid.model.d_model=\[\.\.\.\]"):
        engine.check_forwarded(protocol, ["model.d_model=32"])
    bundles = write_protocol(tmp_path / "bundles.yaml", SETTINGS)
    with pytest.raises(ConfigError, match="grid axis 'setting'"):
        engine.check_forwarded(bundles, ["task.seq_len=30"])
    engine.check_forwarded(protocol, ["trainer.max_steps=3", "task.num_kv_pairs=8"])
