"""Data-parallel training (trainer=ddp_cpu: 2 CPU processes, gloo): sharded data, metrics over
whole splits, rank-0-only outputs, resume."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import seqicl
import seqicl.tasks as tasks
from ddp_recording import Recorder
from helpers import FAST, run_module
from seqicl.errors import ConfigError
from seqicl.evaluation import tokens  # noqa: F401 - registers the token evaluator
from seqicl.evaluation.base import Settings, evaluator_for
from seqicl.evaluation.checkpoint import restore
from seqicl.tasks.datamodule import TaskDataModule, TrainBatches, check_world_size
from seqicl.tasks.splits import example_hashes, rank_slice
from seqicl.training.distributed import world_size

# FAST's trainer=debug settings, on trainer=ddp_cpu
DDP = [*(a for a in FAST if a != "trainer=debug"), "trainer=ddp_cpu", "trainer.max_steps=20",
       "trainer.val_check_interval=10", "trainer.log_every_n_steps=5", "data.val_size=66", "data.test_size=63"]
RUN_FILES = {".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log",
             "metrics.csv", "results.json", "checkpoints", "checkpoints/best.ckpt", "checkpoints/last.ckpt"}


def files_under(out: Path) -> set:
    return {str(p.relative_to(out)) for p in out.rglob("*")}


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (3, 3), (256, 8)])
def test_rank_slices_partition_in_order(n, world):
    shares = [list(range(n))[rank_slice(n, r, world)] for r in range(world)]
    assert sum(shares, []) == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1 and min(map(len, shares)) >= 1


@pytest.mark.parametrize("train_size", [None, 48])
def test_rank_shares_are_disjoint_and_make_the_single_process_batch(train_size):
    task = tasks.build("mqar", vocab_size=64, seq_len=16, num_kv_pairs=2)
    data = None if train_size is None else task.sample(train_size, seed=0)
    single = TrainBatches(task, 8, seed=3, data=data, steps_per_epoch=6)
    ranks = [TrainBatches(task, 8, seed=3, data=data, steps_per_epoch=6, rank=r, world=2) for r in range(2)]
    for epoch in range(2):
        whole = [b["inputs"] for b in single]
        shares = [[b["inputs"] for b in r] for r in ranks]
        assert len(whole) == len(shares[0]) == len(shares[1]) == 6
        for step, batch in enumerate(whole):
            assert shares[0][step].shape[0] == shares[1][step].shape[0] == 4
            assert torch.equal(torch.cat([shares[0][step], shares[1][step]]), batch)
        if train_size is not None:  # every example of the fixed set once per epoch, on one rank only
            seen = torch.cat([torch.cat(s) for s in shares])
            assert sorted(example_hashes({"x": seen}).tolist()) == sorted(example_hashes({"x": data["inputs"]}).tolist())
    # resumable on each rank
    again = TrainBatches(task, 8, seed=3, data=data, steps_per_epoch=6, rank=1, world=2)
    again.load_state_dict({"epoch": 1, "pos": 4})
    rest = [b["inputs"] for b in again]
    assert len(rest) == 2 and all(torch.equal(a, b) for a, b in zip(rest, shares[1][4:]))


def test_sharded_stream_never_serves_validation_or_test_examples():
    task = tasks.build("induction_head", vocab_size=4, context_len=4, train_all_tokens=False)
    dm = TaskDataModule(task, batch_size=32, val_size=3, test_size=3, steps_per_epoch=20, on_device=False)
    dm.setup()
    held = {tuple(r) for s in ("val", "test") for r in dm.splits[s]["inputs"].tolist()}
    stream = dm.train_batches
    for rank in range(2):
        share = TrainBatches(stream.task, 32, stream.seed, steps_per_epoch=20, exclude=stream.exclude, rank=rank,
                             world=2)
        served = [tuple(r) for b in share for r in b["inputs"].tolist()]
        assert len(served) == 20 * 16 and not held & set(served)


def test_batch_must_divide_and_splits_must_cover_the_ranks():
    check_world_size(64, 2, 2, 2)
    with pytest.raises(ConfigError, match="data.batch_size=63 is the global batch, split evenly over 2"):
        check_world_size(63, 500, 1000, 2)
    with pytest.raises(ConfigError, match="data.val_size=1 is smaller than the 2 processes"):
        check_world_size(64, 1, 1000, 2)
    assert world_size({"strategy": "ddp", "accelerator": "cpu", "devices": 2}) == 2
    assert world_size({"accelerator": "cpu", "devices": 2}) == 1  # not data-parallel: Lightning's own handling
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer=ddp needs CUDA GPUs"):
            world_size({"strategy": "ddp", "accelerator": "gpu", "devices": -1})


def test_indivisible_batch_is_one_line(tmp_path):
    proc = run_module("train", *DDP, "data.batch_size=15", f"hydra.run.dir={tmp_path}", timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == "error: data.batch_size=15 is the global batch, split evenly over 2 processes: make it a multiple of 2"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = run_module("train", *DDP, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def evaluate(checkpoint: Path, split: str, tmp_path: Path) -> dict:
    """Metrics of ``checkpoint`` on its run's ``split``, in this single process."""
    tmp_path.mkdir()
    restored = restore(checkpoint)
    c = restored.config
    dm = TaskDataModule(restored.task, seed=int(c["seed"]), **{**c["data"], "on_device": False})
    dm.setup()
    settings = Settings(out=tmp_path, device=torch.device("cpu"), batch_size=7, seed=0, samples=0, temperature=1.0)
    return evaluator_for(restored.task)(restored.model, restored.task, dm.splits[split], settings)["metrics"]


def test_ddp_run_writes_its_outputs_once_with_metrics_over_whole_splits(ddp_run, tmp_path):
    out, proc = ddp_run
    assert files_under(out) == RUN_FILES
    assert proc.stdout.count("seqicl run") == 1
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "completed" and r["steps"] == 20
    assert r["val"]["scored"] == 66 * 4 and r["test"]["scored"] == 63 * 4  # odd sizes: shares of 33/33, 32/31
    best = out / "checkpoints" / "best.ckpt"
    for split in ("val", "test"):
        single = evaluate(best, split, tmp_path / split)
        assert single["scored"] == r[split]["scored"]
        assert single["accuracy"] == r[split]["accuracy"]
        assert single["loss"] == pytest.approx(r[split]["loss"], rel=1e-5)


def test_ddp_matches_a_single_process_run(ddp_run, tmp_path):
    """The same global batches, the mean of the ranks' gradients: the same run up to rounding."""
    out, _ = ddp_run
    proc = run_module("train", *FAST, "data.val_size=66", "data.test_size=63", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp, single = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path))
    for split in ("val", "test"):
        assert ddp[split]["accuracy"] == single[split]["accuracy"]
        assert ddp[split]["loss"] == pytest.approx(single[split]["loss"], rel=1e-4)


def test_ddp_resumes_from_last_checkpoint_as_a_single_process_does(ddp_run, tmp_path):
    out, _ = ddp_run
    resume = ["trainer.max_steps=30", f"ckpt_path={out}/checkpoints/last.ckpt"]
    proc = run_module("train", *DDP, *resume, f"hydra.run.dir={tmp_path / 'ddp'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_module("train", *FAST, "data.val_size=66", "data.test_size=63", *resume,
                      f"hydra.run.dir={tmp_path / 'single'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, single = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("ddp", "single"))
    assert ddp["status"] == "completed" and ddp["steps"] == single["steps"] == 30
    assert ddp["test"]["accuracy"] == single["test"]["accuracy"]
    assert ddp["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=1e-4)


def test_ranks_read_disjoint_shares_and_only_rank_0_writes(tmp_path):
    """From Python (seqicl.train), with a model factory that the other rank receives pickled."""
    record, out = tmp_path / "record", tmp_path / "run"
    record.mkdir()
    results = seqicl.train(make_model_fn=Recorder(record), output_dir=out, trainer="ddp_cpu",
                           **{"trainer.max_steps": 6, "trainer.val_check_interval": 3, "callbacks.progress_bar": "none", "data.batch_size": 8,
                              "data.val_size": 10, "data.test_size": 10})
    assert results["steps"] == 6 and results["test"]["scored"] == 10 * 4
    assert json.loads((out / "results.json").read_text())["test"] == results["test"]
    assert files_under(out) == RUN_FILES - {".hydra/hydra.yaml", "train.log"}
    writes = (record / "writes-rank1.txt").read_text().splitlines()
    assert f"open {record / 'built-rank1'}" in writes and not [w for w in writes if str(out) in w], writes
    # step k of the run: rank 0's 4 examples, then rank 1's, are the single-process global batch k
    rows = [(record / f"examples-rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert len(rows[0]) == len(rows[1]) == 6 * 4 and not set(rows[0]) & set(rows[1])
    config = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    dm = TaskDataModule(tasks.build(**config["task"]), seed=config["seed"], **{**config["data"], "on_device": False})
    dm.setup()
    stream = iter(dm.train_dataloader())
    for step in range(6):
        whole = [" ".join(map(str, row)) for row in next(stream)["inputs"].tolist()]
        assert whole == rows[0][4 * step:4 * step + 4] + rows[1][4 * step:4 * step + 4]


def test_divergence_stops_every_rank_and_is_reported_once(tmp_path):
    proc = run_module("train", *DDP, "optim.lr=1e6", f"hydra.run.dir={tmp_path}", timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "csv_logs.py" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: training diverged"), proc.stderr
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "diverged"
