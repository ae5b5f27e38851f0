"""Runs that survive faults and never lie: divergence, kill and resume, determinism, bad paths."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import FAST, ROOT, run_module

SMALL = [*FAST, "trainer.max_steps=60", "trainer.val_check_interval=20", "model.embed_dropout=0.1"]


def results(path):
    return json.loads((path / "results.json").read_text())


def test_divergence_is_reported_and_recorded(tmp_path):
    proc = run_module("train", *FAST, "optim.lr=1e6", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "non-finite at step" in lines[0]
    r = results(tmp_path)
    assert r["status"] == "diverged" and isinstance(r["steps"], int) and "non-finite" in r["error"]


def test_same_seed_same_results_whatever_the_hash_seed(tmp_path):
    runs = []
    for i, hash_seed in enumerate(("0", "12345")):
        out = tmp_path / str(i)
        proc = run_module("train", *FAST, f"hydra.run.dir={out}", env={"PYTHONHASHSEED": hash_seed})
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(results(out))
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["val"] == runs[1]["val"]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_corrupt_or_foreign_checkpoint_is_one_line(content, tmp_path):
    path = tmp_path / "bad.ckpt"
    if content is None:
        import torch

        torch.save({"weights": [1, 2, 3]}, path)
    else:
        path.write_bytes(content)
    proc = run_module("train", *FAST, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "ckpt_path=" in lines[0], proc.stderr


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_module("train", *FAST, f"hydra.run.dir={blocker}/run", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: cannot write to output directory")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference = tmp_path / "reference"
    proc = run_module("train", *SMALL, f"hydra.run.dir={reference}")
    assert proc.returncode == 0, proc.stderr[-2000:]

    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-m", "train", *SMALL, f"hydra.run.dir={killed}"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (killed / "results.json").exists()

    proc = run_module("train", *SMALL, f"hydra.run.dir={killed}", f"ckpt_path={last}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = results(reference), results(killed)
    assert b["steps"] == a["steps"] == 60
    assert b["test"] == a["test"] and b["val"] == a["val"]
    steps = [int(r["step"]) for r in csv.DictReader(open(killed / "metrics.csv")) if r.get("val/accuracy")]
    assert steps == sorted(steps) and steps[0] < 20 and steps[-1] >= 59  # the history survives the kill
