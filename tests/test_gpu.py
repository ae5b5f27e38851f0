"""Every layer's device path against its float64 CPU reference (skipped without CUDA)."""

import pytest
import torch

from seqicl import layers
from seqicl.layers.fastpath_check import compare_to_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SMALL = {"sliding_window_attention": {"window_size": 32}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", layers.available())
def test_device_path_matches_reference(name, dtype):
    r = compare_to_reference(name, "cuda", dtype, seq_len=128, **SMALL.get(name, {}))
    assert r["ok"], r


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_flex_sliding_window_matches_reference(dtype):
    r = compare_to_reference("sliding_window_attention", "cuda", dtype, seq_len=128, window_size=32, impl="flex")
    assert r["ok"], r


def test_training_step_on_gpu(tmp_path):
    from helpers import FAST, run_module

    proc = run_module("train", *FAST, "trainer=gpu", "trainer.max_steps=20", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
