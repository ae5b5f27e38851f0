"""The embedded default run keeps its promise: >= 0.99 test accuracy on MQAR, on the CPU, quickly."""

import json
import time

import pytest

from helpers import run_module


@pytest.mark.slow
def test_default_run_solves_mqar(tmp_path):
    start = time.time()
    proc = run_module("train", "callbacks.progress_bar=none", f"hydra.run.dir={tmp_path}", timeout=600)
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["test"]["accuracy"] >= 0.99, r
    assert r["val"]["accuracy"] >= 0.99
    print(f"default run: {r['steps']} steps, {elapsed:.0f} s, test accuracy {r['test']['accuracy']:.4f}")
