"""``python -m train`` end to end: outputs, resume, and one-line errors on bad input."""

import json

import pytest
import torch

from helpers import FAST, run_module


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run_module("train", *FAST, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc


def test_run_writes_its_outputs(finished_run):
    out, proc = finished_run
    for name in ("results.json", "metrics.csv", ".hydra/config.yaml", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    r = json.loads((out / "results.json").read_text())
    for key in ("task", "model", "params", "seed", "steps", "wall_time_s", "git_sha", "val", "test", "state_size"):
        assert key in r, key
    assert r["task"] == "mqar" and r["steps"] == 20 and r["status"] == "completed"
    assert 0.0 <= r["test"]["accuracy"] <= 1.0 and r["test"]["loss"] > 0
    assert r["test"]["scored"] == 64 * 4
    assert "test acc" in proc.stdout and str(out) in proc.stdout
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in header and "val/accuracy" in header


def test_best_checkpoint_is_selected_on_validation(finished_run):
    out, _ = finished_run
    best = torch.load(out / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    cb = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint") and v["monitor"])
    assert cb["monitor"] == "val/accuracy"
    r = json.loads((out / "results.json").read_text())
    assert r["val"]["accuracy"] == pytest.approx(float(cb["best_model_score"]), abs=1e-6)


def test_resume_continues_to_the_new_step_count(finished_run, tmp_path):
    out, _ = finished_run
    proc = run_module("train", *FAST, "trainer.max_steps=30", f"ckpt_path={out}/checkpoints/last.ckpt",
                      f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 30


def test_last_checkpoint_follows_training_when_validation_stops_improving(tmp_path):
    # With no learning the validation accuracy never improves after the first check (step 10),
    # so only last.ckpt can hold the state at the final check (step 20).
    proc = run_module("train", *FAST, "optim.lr=0", "scheduler=constant", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    step = {name: torch.load(tmp_path / f"checkpoints/{name}.ckpt", map_location="cpu",
                             weights_only=False)["global_step"] for name in ("best", "last")}
    assert step == {"best": 10, "last": 20}


def test_a_finished_run_directory_is_never_overwritten(finished_run):
    out, _ = finished_run
    before = (out / "results.json").read_text()
    proc = run_module("train", *FAST, f"hydra.run.dir={out}")
    assert proc.returncode == 2 and "already holds a finished run" in proc.stderr
    assert (out / "results.json").read_text() == before


def test_any_trainer_argument_can_be_set_on_the_command_line(tmp_path):
    proc = run_module("train", *FAST, "trainer.max_time=00:00:10:00", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("override,message", [
    ("data.batch_szie=3", "unknown config key data.batch_szie (did you mean 'batch_size'?)"),
    ("trainer.max_stepz=3", "unknown config key trainer.max_stepz (did you mean 'max_steps'?)"),
    ("+data.batch_szie=3", "unknown config key data.batch_szie"),
    ("task=mqr", "available options in 'task': associative_recall"),
    ("task.num_kv_pairs=100", "num_kv_pairs=100 needs seq_len"),
    ("model.mixer.name=atention", "registered layers: attention"),
    ("ckpt_path=/does/not/exist.ckpt", "does not exist"),
])
def test_bad_input_is_one_line(override, message, tmp_path):
    proc = run_module("train", *FAST, override, f"hydra.run.dir={tmp_path}", timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "checkpoints").exists()


def test_throughput_skips_the_first_steps_and_validation(monkeypatch):
    from types import SimpleNamespace

    from seqicl.training import callbacks

    clock = iter([10.0, 13.0, 15.0, 20.0])   # start, validation start, validation end, end
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    cb = callbacks.Throughput(skip=3)
    trainer = SimpleNamespace(global_step=5, sanity_checking=False)
    module = SimpleNamespace(device=torch.device("cpu"))
    cb.on_train_start(trainer, module)
    for step in range(6, 8):                 # 2 steps after a resume at step 5: still warming up
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, 0)
    assert cb.start is None
    trainer.global_step = 8
    cb.on_train_batch_end(trainer, module, None, None, 0)
    cb.on_validation_start(trainer, module)
    cb.on_validation_end(trainer, module)
    trainer.global_step = 18
    cb.on_train_end(trainer, module)
    assert cb.steps_per_s == pytest.approx(10 / (20.0 - 10.0 - 2.0))


@pytest.mark.parametrize("limits, label", [({"max_steps": 100}, "Epoch 5"),
                                           ({"max_epochs": 10}, "Epoch 5/9")])
def test_progress_bar_labels_step_and_epoch_bounded_runs(limits, label):
    import lightning.pytorch as pl

    from seqicl.training.callbacks import StepRunProgressBar

    bar = StepRunProgressBar()
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, callbacks=[bar], **limits)
    assert trainer.progress_bar_callback is bar
    bar.setup(trainer, None, "fit")
    assert bar._get_train_description(5).strip() == label


def test_throughput_is_none_for_a_run_shorter_than_its_warm_up(finished_run):
    out, _ = finished_run
    assert json.loads((out / "results.json").read_text())["train_steps_per_s"] is None


def test_compiled_training_goes_through_the_model_and_the_loss():
    """compile=... compiles the objective's path (hidden states, scored positions, head, loss),
    not only the model's forward, which the objective never calls."""
    import seqicl.tasks as tasks
    from seqicl.models import TokenLM
    from seqicl.training.module import SeqICLModule

    task = tasks.build("mqar", vocab_size=64, seq_len=16, num_kv_pairs=2)
    torch.manual_seed(0)
    model = TokenLM(64, 16, d_model=16, n_layers=1, mixer={"name": "attention", "n_heads": 2}, state_mixer="mlp")
    module = SeqICLModule(model, task, {"lr": 1e-3}, {"name": "constant"}, max_steps=10)
    batch = task.sample(4, seed=0)
    eager, _ = module._train_loss(batch)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    module.compile_training(backend=backend)
    compiled, stats = module._train_loss(batch)
    assert len(graphs) == 1
    assert "head" in graphs[0] and "embed" in graphs[0] and "cross_entropy" in graphs[0]
    assert torch.allclose(compiled, eager) and set(stats) == {"loss", "accuracy"}
    assert list(module.model.state_dict()) == list(model.state_dict())
