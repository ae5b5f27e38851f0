"""model.init: the GPT-2 scheme's draws, the residual outputs it finds, what it leaves alone."""

import math

import pytest
import torch
from torch import nn

import seqicl.tasks as tasks
from seqicl.errors import ConfigError
from seqicl.models import build_model
from seqicl.models.init_schemes import residual_outputs

TASK = tasks.build("mqar", vocab_size=64, seq_len=32, num_kv_pairs=4)


def build(mixer, init, n_layers=2, state_mixer="mlp", d_model=64, seed=0):
    torch.manual_seed(seed)
    return build_model({"d_model": d_model, "n_layers": n_layers, "mixer": mixer, "state_mixer": state_mixer,
                        "init": init}, TASK)


def test_gpt2_draws_linear_maps_and_embeddings_from_n_0_002():
    model = build({"name": "attention", "n_heads": 2}, "gpt2", n_layers=3, d_model=128)
    outputs = {id(p) for p in residual_outputs(model)}
    assert len(outputs) == 6                              # 3 blocks x (attention, mlp)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            want = 0.02 / math.sqrt(6) if id(module) in outputs else 0.02
            assert module.weight.std().item() == pytest.approx(want, rel=0.1)
            assert module.bias is None or not module.bias.any()
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_default_keeps_each_layers_own_initialisation():
    model = build({"name": "attention", "n_heads": 2}, "default", d_model=128)
    fc1 = model.blocks[0].state_mixer.fc1                 # PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert fc1.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 128), rel=0.1)
    assert fc1.bias.abs().max().item() > 0


@pytest.mark.parametrize("mixer,state_mixer,name", [
    ("attention", "mlp", "out_proj"), ("h3", "mlp", "out_proj"), ("s4d", "mlp", "out_proj"),
    ("gilr", "mlp", "out_proj"), ("rwkv", "mlp", "output"), ("mamba", None, "out_proj"),
    ("hyena", "swiglu", "out_proj")])
def test_residual_outputs_are_each_branchs_last_projection(mixer, state_mixer, name):
    model = build(mixer, "default", state_mixer=state_mixer)
    want = []
    for block in model.blocks:
        want.append(getattr(block.mixer, name))
        if state_mixer is not None:
            want.append(getattr(block.state_mixer, "fc2" if state_mixer == "mlp" else "down"))
    assert [id(p) for p in residual_outputs(model)] == [id(p) for p in want]


def test_layers_own_initialisations_survive_gpt2():
    default = build("mamba", "default", state_mixer=None)
    gpt2 = build("mamba", "gpt2", state_mixer=None)
    for a, b in zip(default.blocks, gpt2.blocks):
        assert torch.equal(a.mixer.dt_proj.bias, b.mixer.dt_proj.bias)
        assert torch.equal(a.mixer.dt_proj.weight, b.mixer.dt_proj.weight)
        assert not torch.equal(a.mixer.in_proj.weight, b.mixer.in_proj.weight)
    default, gpt2 = build("hyena", "default"), build("hyena", "gpt2")
    assert torch.equal(default.blocks[0].mixer.filter.ffn[0].weight, gpt2.blocks[0].mixer.filter.ffn[0].weight)


def test_unknown_scheme_is_an_error():
    with pytest.raises(ConfigError, match="model.init"):
        build("attention", "xavier")
