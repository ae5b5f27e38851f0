"""The Triton fast paths of lru, gilr, mamba and rwkv: dispatch, and the kernels on the CPU.

Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors, but triton reads the
variable when a kernel is defined, i.e. when seqicl is imported: the kernel cases
(tests/triton_interpreter_cases.py) run in a pytest subprocess that has it set, and this process's
environment is left alone.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqicl import layers
from seqicl.errors import ConfigError
from seqicl.layers import triton_scan

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(__file__).with_name("triton_interpreter_cases.py")
FAST_PATH_LAYERS = ["gilr", "lru", "mamba", "rwkv"]


@pytest.mark.parametrize("name", FAST_PATH_LAYERS)
def test_impl_is_validated(name):
    with pytest.raises(ConfigError, match="impl"):
        layers.build(name, d_model=8, max_len=8, impl="cuda")


def test_cpu_tensors_are_not_available():
    assert not triton_scan.available(torch.zeros(2))


def test_without_triton_nothing_is_available(monkeypatch):
    monkeypatch.setattr(triton_scan, "triton", None)
    assert not triton_scan.available()


def test_kernels_match_references_under_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-q", "-rfEs",
                           str(CASES)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
