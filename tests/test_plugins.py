"""Bring your own architecture: plug-in layers, the layer contract, ``seqicl.train`` and
``seqicl.benchmark``, and the README's commands run as written."""

import json
import re
import shlex
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from torch import nn

import seqicl
from helpers import FAST, ROOT, run_module
from seqicl import layers
from seqicl.api import format_value, to_overrides
from seqicl.cli import select_layer_configs
from seqicl.errors import ConfigError
from seqicl.layers.contract import ContractError
from seqicl.sweeps import engine

SHORT = [*FAST, "trainer.max_steps=4", "trainer.val_check_interval=2"]
# The same settings as keyword arguments of seqicl.train / seqicl.benchmark.
SHORT_KW = {"trainer": "debug", "trainer.max_steps": 4, "trainer.val_check_interval": 2,
            "callbacks": {"progress_bar": "none"}, "data": {"val_size": 64, "test_size": 64, "batch_size": 16}}

PLUGIN = '''
import torch
from torch import nn

from seqicl.layers import register


class ShiftMixer(nn.Module):
    """Mixes each position with the one ``shift`` steps before it (unregistered)."""

    def __init__(self, d_model, max_len, shift=1):
        super().__init__()
        self.shift, self.proj = shift, nn.Linear(2 * d_model, d_model)

    def forward(self, x):
        prev = nn.functional.pad(x, (0, 0, self.shift, 0))[:, : x.shape[1]]
        return self.proj(torch.cat([x, prev], dim=-1))


@register("tiny_mlp", kind="state")
class TinyMLP(nn.Module):
    def __init__(self, d_model, max_len, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, d_model))

    def forward(self, x):
        return self.net(x)


class Peek(nn.Module):
    """Looks two positions ahead: not causal."""

    def __init__(self, d_model, max_len):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(torch.roll(x, -2, dims=1))
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A user package outside the repository: mypkg/mixers.py."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "mixers.py").write_text(PLUGIN)
    return root


def train_cli(plugin_path, *args):
    import os

    path = os.pathsep.join([str(plugin_path), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return run_module("train", *args, env={"PYTHONPATH": path})


# ---------------------------------------------------------------------------------------------
# plug-in layers from the command line


def test_target_plugin_trains_from_the_command_line(plugin_path, tmp_path):
    proc = train_cli(plugin_path, *SHORT, "model.mixer._target_=mypkg.mixers.ShiftMixer", "+model.mixer.shift=2",
                     f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["status"] == "completed" and r["steps"] == 4
    cfg = (tmp_path / ".hydra" / "config.yaml").read_text()
    assert "_target_: mypkg.mixers.ShiftMixer" in cfg and "shift: 2" in cfg
    assert "n_heads" not in cfg  # the attention's settings did not come along


def test_registered_plugin_by_name_via_imports(plugin_path, tmp_path):
    proc = train_cli(plugin_path, *SHORT, "imports=[mypkg.mixers]", "model.state_mixer.name=tiny_mlp",
                     "+model.state_mixer.hidden=4", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"
    assert "name: tiny_mlp" in (tmp_path / ".hydra" / "config.yaml").read_text()


def test_a_non_causal_plugin_stops_the_run_before_training(plugin_path, tmp_path):
    proc = train_cli(plugin_path, *SHORT, "model.mixer._target_=mypkg.mixers.Peek", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["error: layer mypkg.mixers.Peek (block 0 mixer) is not causal: output at position 0 changes "
                     "when position 2 changes"], proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_setting_a_slots_target_or_name_selects_its_layer_config():
    assert select_layer_configs(["+model.mixer._target_=a.B", "+model.mixer.k=3"]) == [
        "model.mixer._target_=a.B", "+model.mixer.k=3", "layer@model.mixer=custom"]
    assert select_layer_configs(["model.state_mixer.name=swiglu", "model.mixer.name=my_layer"]) == [
        "model.state_mixer.name=swiglu", "model.mixer.name=my_layer", "layer@model.mixer=custom",
        "layer@model.state_mixer=swiglu"]
    explicit = ["layer@model.mixer=attention", "+model.mixer._target_=a.B"]
    assert select_layer_configs(explicit) == explicit
    assert select_layer_configs(["model.mixer.name=a,b"]) == ["model.mixer.name=a,b"]


def test_a_sweep_shares_the_selected_layer_config(tmp_path):
    protocol = engine.Protocol(name="p", description="", base=["model.mixer._target_=a.B"],
                               grid={"optim.lr": [0.1, 0.2]}, select={}, report={}, out_dir=tmp_path)
    [cmd] = engine.train_commands(protocol, [], [])
    assert "layer@model.mixer=custom" in cmd
    exclude = next(a for a in cmd if a.startswith("hydra.job.config.override_dirname.exclude_keys="))
    assert "layer" in exclude.split("=", 1)[1].strip("[]").split(",")  # Hydra excludes group overrides by group


def test_a_spec_with_both_name_and_target_is_refused():
    with pytest.raises(ConfigError, match="has both name 'attention' and _target_"):
        layers.build_spec({"name": "attention", "_target_": f"{__name__}.Good"}, 16, 8, "sequence")
    with pytest.raises(ConfigError, match="needs a registered name .* or a _target_"):
        layers.build_spec({"name": None, "_target_": None}, 16, 8, "sequence")
    with pytest.raises(ConfigError, match="is a state mixer, but it is used as the sequence mixer"):
        layers.build_spec({"_target_": "seqicl.layers.mlp.MLP"}, 16, 8, "sequence")


@pytest.mark.parametrize("target,message", [
    ("nopkg.mixers.Thing", "cannot import 'nopkg.mixers.Thing': No module named 'nopkg'"),
    ("torch.nn.NoSuchLayer", "'torch.nn' has no attribute 'NoSuchLayer'"),
    ("torch.nn.functional.relu", "is not an nn.Module class"),
    ("Thing", "must be a dotted path"),
])
def test_bad_targets_are_named(target, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        layers.build_spec({"_target_": target}, 16, 8, "sequence")


# ---------------------------------------------------------------------------------------------
# the layer contract


class Good(nn.Module):
    def __init__(self, d_model, max_len, width=2):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x).cumsum(dim=1)


class WrongShape(Good):
    def forward(self, x):
        return self.proj(x)[..., :-1]


class Peek(Good):
    def forward(self, x):
        return self.proj(x) + torch.roll(x, -2, dims=1)


class NeedsWidth(Good):
    def __init__(self, d_model, max_len, width):
        super().__init__(d_model, max_len)


class NoMaxLen(nn.Module):
    def __init__(self, d_model):
        super().__init__()


class Nan(Good):
    def forward(self, x):
        return self.proj(x) * float("nan")


class ReturnsTuple(Good):
    def forward(self, x):
        return self.proj(x), None


@pytest.mark.parametrize("cls,message", [
    (WrongShape, "layer test_plugins.WrongShape has the wrong output shape: (2, 8, 16) -> (2, 8, 15)"),
    (Peek, "layer test_plugins.Peek is not causal: output at position 0 changes when position 2 changes"),
    (NeedsWidth, "layer test_plugins.NeedsWidth breaks the constructor contract cls(d_model, max_len, "
                 "**hyper_parameters) with hyper-parameters {}: NeedsWidth.__init__() missing 1 required "
                 "positional argument: 'width'"),
    (NoMaxLen, "layer test_plugins.NoMaxLen breaks the constructor contract"),
    (Nan, "layer test_plugins.Nan returns non-finite values (nan or inf) on finite random inputs"),
    (ReturnsTuple, "layer test_plugins.ReturnsTuple returns tuple, not a tensor"),
])
def test_contract_check_names_the_broken_rule(cls, message):
    with pytest.raises(ContractError) as e:
        layers.check({"_target_": f"{__name__}.{cls.__name__}"}, d_model=16, max_len=8)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_contract_check_passes_good_layers_and_keeps_rng_and_mode():
    layer = layers.check({"_target_": f"{__name__}.Good", "width": 3}, d_model=16, max_len=8)
    assert isinstance(layer, Good)
    layers.check("attention", d_model=16, max_len=8)
    layers.check({"name": "mlp", "expand": 2.0}, d_model=16, max_len=8, kind="state")
    layer.train()
    state = torch.get_rng_state()
    layers.check_layer(layer, d_model=16, seq_len=8)
    assert layer.training and torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------------------------------------
# seqicl.train


class TokenModel(nn.Module):
    """Token ids -> logits: embedding, a causal running mean, a linear head."""

    def __init__(self, vocab_size=64, d_model=16):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab_size, d_model), nn.Linear(d_model, vocab_size)

    def forward(self, tokens):
        h = self.embed(tokens).cumsum(dim=1)
        return self.head(h / torch.arange(1, tokens.shape[1] + 1, device=tokens.device)[:, None])


class PeekingModel(TokenModel):
    def forward(self, tokens):
        return super().forward(torch.roll(tokens, -1, dims=1))


def test_importing_seqicl_stays_cheap():
    code = ("import sys, seqicl; seqicl.train; seqicl.benchmark; "
            "print('lightning' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_python_values_become_hydra_overrides():
    assert format_value(1e-3) == "0.001" and format_value(True) == "true" and format_value(None) == "null"
    assert format_value("a.b.C") == "a.b.C" and format_value("null") == "'null'" and format_value("x y") == "'x y'"
    assert format_value(["a.b", 2]) == "[a.b,2]" and format_value({"k": "v"}) == "{k:v}"
    assert to_overrides({"trainer": "debug", "optim": {"lr": 0.01}, "model.mixer": {"_target_": "a.B", "k": 3},
                         "layer@model.state_mixer": "swiglu", "imports": ["a.b"]}) == [
        "trainer=debug", "optim.lr=0.01", "++model.mixer._target_=a.B", "++model.mixer.k=3",
        "layer@model.state_mixer=swiglu", "imports=[a.b]"]


def test_train_with_a_layer_list(tmp_path):
    r = seqicl.train(task="mqar", layers=["attention", "swiglu", {"_target_": Good, "width": 4}, "mlp", "swiglu"],
                     output_dir=tmp_path, model={"d_model": 16}, **SHORT_KW)
    assert r["status"] == "completed" and r["steps"] == 4 and r["task"] == "mqar"
    assert r["model"] == "attention-swiglu-Good-mlp-swiglu"
    assert json.loads((tmp_path / "results.json").read_text()) == r
    cfg = (tmp_path / ".hydra" / "config.yaml").read_text()
    assert "_target_: test_plugins.Good" in cfg and "width: 4" in cfg
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file() and (tmp_path / "metrics.csv").is_file()


def test_train_with_a_module(tmp_path):
    model = TokenModel()
    before = model.head.weight.detach().clone()
    r = seqicl.train(model=model, output_dir=tmp_path, **SHORT_KW)
    assert r["status"] == "completed" and r["model"] == "TokenModel" and r["params"] == 64 * 16 + 16 * 64 + 64
    assert json.loads((tmp_path / "results.json").read_text())["test"] == r["test"]
    assert not torch.equal(before, model.head.weight)  # trained in place
    assert "backbone: user" in (tmp_path / ".hydra" / "config.yaml").read_text()


def test_train_refuses_bad_models_before_training(tmp_path):
    with pytest.raises(ContractError, match="model test_plugins.PeekingModel is not causal: logits at position 0 "
                                            "change when the token at position 1 changes"):
        seqicl.train(model=PeekingModel(), output_dir=tmp_path / "peek", **SHORT_KW)
    with pytest.raises(ContractError, match=re.escape("must return logits of shape (batch, seq, vocab_size) = "
                                                      "(2, 16, 64)")):
        seqicl.train(make_model_fn=lambda task, vocab_size, max_length: nn.Embedding(vocab_size, 8),
                     output_dir=tmp_path / "shape", **SHORT_KW)
    with pytest.raises(ConfigError, match="model.d_model do not apply to model=<nn.Module>"):
        seqicl.train(model=TokenModel(), output_dir=tmp_path / "x", **{"model.d_model": 8}, **SHORT_KW)
    with pytest.raises(ConfigError, match="give one of layers=, model="):
        seqicl.train(layers=["attention"], model=TokenModel(), output_dir=tmp_path / "y")
    with pytest.raises(ConfigError, match="unknown config key trainer.max_step"):
        seqicl.train(output_dir=tmp_path / "z", **{"trainer.max_step": 3})
    assert not (tmp_path / "peek" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# seqicl.benchmark


def test_benchmark_smoke_protocol_and_resume(tmp_path):
    calls = []

    def make_model_fn(task, vocab_size, max_length, d_model=16):
        calls.append((task, vocab_size, max_length, d_model))
        return TokenModel(vocab_size, d_model)

    table = seqicl.benchmark(make_model_fn, protocol="smoke", out_dir=tmp_path, **SHORT_KW)
    assert isinstance(table, pd.DataFrame) and list(table.index) == [16, 32]
    assert list(table.columns) == ["test.accuracy"] and table["test.accuracy"].between(0, 1).all()
    assert sorted(calls) == [("mqar", 64, 32, 16)] * 2 + [("mqar", 64, 32, 32)] * 2
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == sorted(engine.run_name(r) for r in engine.expand(engine.load_protocol("smoke")))
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(df) == 4 and set(df["status"]) == {"completed"} and set(df["model"]) == {"make_model_fn"}
    assert "4 completed" in (tmp_path / "report.md").read_text()

    calls.clear()
    again = seqicl.benchmark(make_model_fn, protocol="smoke", out_dir=tmp_path, **SHORT_KW)
    assert calls == [] and again.equals(table)
    assert "4 were already finished" in (tmp_path / "report.md").read_text()


def test_benchmark_records_a_failing_run_and_goes_on(tmp_path):
    calls = []

    def make_model_fn(task, vocab_size, max_length):
        calls.append(task)
        return (PeekingModel if len(calls) == 1 else TokenModel)(vocab_size)

    with pytest.warns(UserWarning) as record:
        table = seqicl.benchmark(make_model_fn, protocol="smoke", out_dir=tmp_path, **SHORT_KW)
    messages = [str(w.message) for w in record]
    assert any("grid axes model.d_model of the protocol do not reach make_model_fn" in m for m in messages)
    assert any(m.startswith("failed: ") and "is not causal" in m for m in messages)
    df = pd.read_csv(tmp_path / "results.csv")
    assert sorted(df["status"]) == ["completed", "completed", "completed", "failed"]
    assert list(table.index) == [16, 32]
    with pytest.raises(ConfigError, match="model.n_layers do not apply to make_model_fn"):
        seqicl.benchmark(make_model_fn, protocol="smoke", out_dir=tmp_path / "other", **{"model.n_layers": 2})


# ---------------------------------------------------------------------------------------------
# the README's example, run as written (with tiny step counts)


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```\s*<!-- /{marker} -->", text, re.S)
    assert m, f"README.md has no block marked {marker}"
    return m.group(1)


def test_readme_shows_the_example_file():
    assert readme_block("example-mixer") == (ROOT / "examples" / "my_mixer.py").read_text()


def test_readme_command_lines(tmp_path):
    commands = [ln for ln in readme_block("example-cli").splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(commands) >= 2
    for i, line in enumerate(commands):
        argv = shlex.split(line.split(" #")[0])
        assert argv[:3] == ["python", "-m", "train"], line
        out = tmp_path / str(i)
        proc = run_module("train", *argv[3:], *SHORT, f"hydra.run.dir={out}")
        assert proc.returncode == 0, line + "\n" + proc.stderr[-2000:]
        assert json.loads((out / "results.json").read_text())["status"] == "completed"


def test_readme_python_example(tmp_path):
    harness = textwrap.dedent(f"""
        import seqicl, seqicl.api
        TINY = {SHORT_KW!r}
        def train(*args, **kwargs):
            return seqicl.api.train(*args, **{{**kwargs, **TINY, "output_dir": {str(tmp_path / "train")!r}}})
        def benchmark(*args, **kwargs):
            return seqicl.api.benchmark(*args, **{{**kwargs, **TINY, "out_dir": {str(tmp_path / "bench")!r}}})
        seqicl.train, seqicl.benchmark = train, benchmark
    """)
    code = harness + readme_block("example-python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "train" / "results.json").read_text())["status"] == "completed"
    assert pd.read_csv(tmp_path / "bench" / "results.csv")["status"].eq("completed").all()


def test_a_sweep_runs_a_plugin_given_on_its_command_line(tmp_path):
    preset = tmp_path / "one.yaml"
    preset.write_text("name: one\n"
                      f"base: [{', '.join(SHORT)}]\n"
                      "grid:\n  optim.lr: [0.001]\n"
                      "report: {metric: test.accuracy, rows: [optim.lr]}\n")
    proc = run_module("sweep", f"sweep={preset}", f"sweep.out_dir={tmp_path / 'out'}",
                      "model.mixer._target_=examples.my_mixer.GatedConvMixer", "+model.mixer.kernel_size=2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(df["status"]) == ["completed"] and df["run_dir"][0].endswith("/runs/optim.lr=0.001")
    assert "GatedConvMixer" in (tmp_path / "out" / "runs" / "optim.lr=0.001" / ".hydra" / "config.yaml").read_text()
