"""The read-in/read-out backbone for continuous prompts: layout, causality, selection by task."""

import pytest
import torch

import seqicl.tasks as tasks
from seqicl.errors import ConfigError
from seqicl.models import build_model, state_size
from seqicl.models.continuous import ContinuousModel

MODEL = {"backbone": "auto", "d_model": 16, "n_layers": 2, "mixer": {"name": "attention", "n_heads": 2},
         "state_mixer": "mlp", "positions": "learned"}


def test_interleaving_puts_y_in_the_first_coordinate():
    model = ContinuousModel(n_dims=3, max_len=8, d_model=8, n_layers=1)
    xs = torch.arange(12.0).reshape(1, 4, 3)
    ys = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    z = model.interleave(xs, ys)
    assert z.shape == (1, 8, 3)
    assert torch.equal(z[0, 0::2], xs[0])
    assert torch.equal(z[0, 1::2, 0], ys[0]) and not bool(z[0, 1::2, 1:].any())


@pytest.mark.parametrize("name", ["linear_regression", "conjunction"])
def test_auto_backbone_is_continuous(name):
    task = tasks.build(name, n_dims=5, n_points=6)
    model = build_model(MODEL, task)
    assert isinstance(model, ContinuousModel) and model.max_len == task.seq_len == 12
    batch = task.sample(3, seed=0)
    assert model(batch["xs"], batch["ys"]).shape == (3, 6)
    assert state_size(model, task.seq_len) is not None


def test_prediction_k_sees_only_earlier_pairs_and_its_own_x():
    torch.manual_seed(0)
    task = tasks.build("linear_regression", n_dims=4, n_points=7)
    model = build_model(MODEL, task).eval()
    b = task.sample(2, seed=1)
    base = model(b["xs"], b["ys"])
    for k in range(6):
        xs, ys = b["xs"].clone(), b["ys"].clone()
        ys[:, k:] += 5.0
        xs[:, k + 1:] += 5.0
        out = model(xs, ys)
        torch.testing.assert_close(out[:, :k + 1], base[:, :k + 1])
        assert not torch.allclose(out[:, k + 1], base[:, k + 1])


def test_backbone_mismatches_are_config_errors():
    with pytest.raises(ConfigError, match="not a token task"):
        build_model({**MODEL, "backbone": "token_lm"}, tasks.build("linear_regression"))
    with pytest.raises(ConfigError, match="not a continuous task"):
        build_model({**MODEL, "backbone": "continuous"}, tasks.build("mqar"))
    with pytest.raises(ConfigError, match="tie_embeddings"):
        build_model({**MODEL, "tie_embeddings": True}, tasks.build("linear_regression"))


def test_longer_prompt_than_max_len_is_refused():
    model = ContinuousModel(n_dims=2, max_len=6, d_model=8, n_layers=1, positions="learned")
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 4, 2), torch.zeros(1, 4))
