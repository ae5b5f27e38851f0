"""Random parameter combinations for every task: a valid batch or a ValueError, nothing else."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqicl.tasks as tasks

LIMIT = 300  # keep generated sizes small enough for a 2-core machine


def value_strategy(default):
    if isinstance(default, bool):
        return st.one_of(st.booleans(), st.sampled_from([0, "yes", None]))
    if isinstance(default, int):
        return st.one_of(st.integers(-3, min(LIMIT, 2 * default + 8)), st.just(default), st.floats(-1, 10),
                         st.sampled_from(["8", None]))
    if isinstance(default, float):
        return st.one_of(st.floats(-1.0, 2 * default + 1.0), st.just(float("nan")), st.just(default), st.integers(-2, 4),
                         st.sampled_from(["0.5", None]))
    if isinstance(default, str):
        return st.one_of(st.just(default), st.text(max_size=6), st.integers(0, 3))
    if default is None:
        return st.one_of(st.none(), st.integers(-2, 64), st.floats(-1, 4))
    return st.just(default)


def check_batch(task, batch, n):
    if task.kind == "token":
        x, y = batch["inputs"], batch["targets"]
        assert x.dtype == torch.long and y.dtype == torch.long
        assert x.shape == y.shape == (n, task.seq_len)
        assert int(x.min()) >= 0 and int(x.max()) < task.vocab_size
        scored = y != -100
        assert bool(scored.any(dim=1).all()), "every example has a scored position"
        assert int(y[scored].min()) >= 0 and int(y[scored].max()) < task.vocab_size
        if "loss_targets" in batch:
            assert batch["loss_targets"].shape == y.shape
    else:
        assert batch["xs"].shape[0] == batch["ys"].shape[0] == n
        assert torch.isfinite(batch["xs"]).all() and torch.isfinite(batch["ys"]).all()


@pytest.mark.parametrize("name", tasks.available())
def test_random_parameters(name):
    defaults = tasks.parameters(name)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(params=st.fixed_dictionaries({}, optional={k: value_strategy(v) for k, v in defaults.items()}),
           seed=st.integers(0, 2**31))
    def check(params, seed):
        try:
            task = tasks.build(name, **params)
        except ValueError:
            return
        n = 3
        check_batch(task, task.sample(n, seed=seed), n)

    check()
