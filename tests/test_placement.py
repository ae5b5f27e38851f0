"""GPU placement of a sweep's concurrent runs: the slot allocator, and a joblib sweep placed on
fake GPU ids (CPU runs hold the slots as GPU runs would)."""

import json
import multiprocessing
import os
import signal
import threading
import time
from collections import defaultdict

import pytest

from helpers import run_module
from seqicl.errors import ConfigError
from seqicl.sweeps import engine
from seqicl.training import placement


def intervals(lock_dir):
    """``{(gpu, slot): [(start, end, pid), ...]}`` from placement.log."""
    open_, done = {}, defaultdict(list)
    for line in (lock_dir / placement.LOG).read_text().splitlines():
        t, event, gpu, slot, pid = line.split()
        key = (int(gpu.split("=")[1]), int(slot.split("=")[1]))
        if event == "acquire":
            assert key not in open_, f"{key} acquired twice"
            open_[key] = (float(t), pid)
        else:
            start, holder = open_.pop(key)
            assert holder == pid
            done[key].append((start, float(t), pid))
    assert not open_
    return done


def max_overlap(spans):
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans], key=lambda x: (x[0], x[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_threads_never_share_a_slot_and_fill_every_gpu(tmp_path):
    gpus, per_gpu, active, peak = [3, 5, 7], 2, defaultdict(int), defaultdict(int)
    lock = threading.Lock()

    def run():
        with placement.slot(gpus, per_gpu, tmp_path, poll_s=0.01) as (gpu, k):
            with lock:
                active[gpu] += 1
                peak[gpu] = max(peak[gpu], active[gpu])
            time.sleep(0.05)
            with lock:
                active[gpu] -= 1

    threads = [threading.Thread(target=run) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dict(peak) == {3: 2, 5: 2, 7: 2}
    spans = intervals(tmp_path)
    assert sum(map(len, spans.values())) == 24
    for key, s in spans.items():
        assert max_overlap(s) == 1, key


def test_runs_that_follow_one_another_spread_over_the_gpus(tmp_path):
    taken = []
    for _ in range(5):
        with placement.slot([0, 1], 1, tmp_path) as held:
            taken.append(held)
    assert taken == [(0, 0), (1, 0), (0, 0), (1, 0), (0, 0)]


def test_first_slots_of_every_gpu_before_second_ones(tmp_path):
    with placement.slot([0, 1], 2, tmp_path) as a, placement.slot([0, 1], 2, tmp_path) as b:
        with placement.slot([0, 1], 2, tmp_path) as c:
            assert (a, b, c) == ((0, 0), (1, 0), (0, 1))


def test_a_failed_run_releases_its_slot(tmp_path):
    with pytest.raises(RuntimeError):
        with placement.slot([0], 1, tmp_path):
            raise RuntimeError("run failed")
    with placement.slot([0], 1, tmp_path, poll_s=0.01) as held:
        assert held == (0, 0)


def _hold(lock_dir, ready):
    with placement.slot([0], 1, lock_dir):
        ready.set()
        time.sleep(60)


def test_a_killed_process_releases_its_slot(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(tmp_path, ready))
    proc.start()
    assert ready.wait(30)
    waiter = threading.Thread(target=lambda: placement.slot([0], 1, tmp_path, poll_s=0.01).__enter__())
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # the only slot is held by the other process
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    waiter.join(10)
    assert not waiter.is_alive()


def _worker(lock_dir, n):
    for _ in range(n):
        with placement.slot([0, 1], 1, lock_dir, poll_s=0.01):
            time.sleep(0.02)


def test_processes_never_share_a_slot(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(tmp_path, 5)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    spans = intervals(tmp_path)
    assert set(spans) == {(0, 0), (1, 0)} and sum(map(len, spans.values())) == 20
    assert all(max_overlap(s) == 1 for s in spans.values())


def test_placement_settings_are_checked():
    args = engine.launcher_overrides("joblib", None, {"gpus": [0, 1], "runs_per_gpu": 2})
    assert "placement.gpus=[0,1]" in args and "placement.runs_per_gpu=2" in args and args[-1] == "hydra.launcher.n_jobs=4"
    with pytest.raises(ConfigError, match="launcher basic has no setting 'gpus'"):
        engine.launcher_overrides("basic", None, {"gpus": [0]})
    with pytest.raises(ConfigError, match="gpus must be a list of distinct GPU ids"):
        engine.launcher_overrides("joblib", None, {"gpus": [0, 0]})
    with pytest.raises(ConfigError, match="runs_per_gpu must be a positive integer"):
        engine.launcher_overrides("joblib", None, {"gpus": [0], "runs_per_gpu": 0})
    with pytest.raises(ConfigError, match="trainer.strategy=ddp spreads a run over several"):
        placement.placed_trainer({"accelerator": "gpu", "strategy": "ddp"}, 0)
    assert placement.placed_trainer({"accelerator": "gpu", "devices": 1}, 3)["devices"] == [3]


def test_joblib_sweep_places_runs_on_fake_gpus(tmp_path):
    preset = tmp_path / "placed.yaml"
    preset.write_text(
        "name: placed\n"
        "base: [trainer=debug, trainer.max_steps=5, callbacks.progress_bar=none, data.val_size=32,\n"
        "       data.test_size=32, data.batch_size=8, model.n_layers=1, model.d_model=16]\n"
        "grid:\n  seed: [0, 1, 2, 3]\n"
        "report: {metric: test.accuracy, rows: [seed]}\n")
    out = tmp_path / "out"
    proc = run_module("sweep", f"sweep={preset}", "launcher=joblib", "gpus=[0,1]", "runs_per_gpu=1",
                      f"sweep.out_dir={out}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = sorted(p for p in (out / "runs").iterdir() if p.is_dir())
    assert [r.name for r in runs] == [f"seed={s}" for s in range(4)]  # placement is not part of the names
    placed = [json.loads((r / "results.json").read_text())["placement"] for r in runs]
    assert {p["gpu"] for p in placed} == {0, 1} and {p["slot"] for p in placed} == {0}
    spans = intervals(out / "locks")
    assert sum(map(len, spans.values())) == 4 and set(spans) == {(0, 0), (1, 0)}
    assert all(max_overlap(s) == 1 for s in spans.values())  # no two concurrent runs on one id
