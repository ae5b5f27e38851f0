"""Every experiment config composes, and its task and model build on the CPU; two of them train 20 steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from seqicl.models import build_model, count_parameters
from seqicl.training.config import validate
from seqicl.training.run import build_task

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = ROOT / "configs" / "experiment"
# Files whose name starts with "_" are shared settings, not experiments.
EXPERIMENTS = sorted(p.relative_to(EXPERIMENTS_DIR).with_suffix("").as_posix()
                     for p in EXPERIMENTS_DIR.rglob("*.yaml") if not p.name.startswith("_"))
ZOO = ["transformer", "h3", "s4d", "gilr", "lru", "lstm", "rwkv", "mamba", "hyena", "retnet", "linear_attention",
       "gla", "based", "rebased", "mamba2", "deltanet"]


def compose_experiment(name: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return validate(compose("train", overrides=[f"experiment={name}", *overrides, "paths.output_dir=unused"]))


def mixers(model) -> list[str]:
    return [type(b.mixer).__name__ if b.mixer is not None else None for b in model.blocks]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_builds(name):
    c = compose_experiment(name)
    task = build_task(c["task"])
    model = build_model(c["model"], task)
    assert len(model.blocks) >= 1
    assert isinstance(c["trainer"]["max_steps"], int) and c["trainer"]["max_steps"] > 0


@pytest.mark.parametrize("family", ["synthetics/associative_recall", "synthetics/induction_head", "synthetics/mqar",
                                    "dfa"])
def test_every_family_has_the_layer_zoo(family):
    present = {e.rsplit("/", 1)[1] for e in EXPERIMENTS if e.startswith(family + "/")}
    assert set(ZOO) <= present


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e.startswith(("synthetics/associative_recall/",
                                                                          "synthetics/induction_head/", "dfa/"))])
def test_model_is_named_after_its_layer(name):
    """Reports label rows with results.json's model, which is model.name."""
    assert compose_experiment(name)["model"]["name"] == name.rsplit("/", 1)[1]


@pytest.mark.parametrize("family", ["associative_recall", "induction_head"])
@pytest.mark.parametrize("layer,d_model,n_layers", [("transformer", 128, 8), ("lstm", 32, 2), ("gilr", 32, 2),
                                                    ("lru", 32, 2), ("rwkv", 32, 2), ("h3", 64, 2), ("s4d", 64, 2),
                                                    ("mamba", 128, 4), ("hyena", 64, 2), ("retnet", 32, 2)])
def test_seq_icl_sizes(family, layer, d_model, n_layers):
    c = compose_experiment(f"synthetics/{family}/{layer}")
    model = build_model(c["model"], build_task(c["task"]))
    assert (model.d_model, len(model.blocks)) == (d_model, n_layers)
    assert c["model"]["embed_dropout"] == 0.1
    has_mlp = layer != "mamba"
    assert all((b.state_mixer is not None) == has_mlp for b in model.blocks)
    if layer == "transformer":
        assert model.pos_embed is not None and c["model"]["mixer"]["dropout"] == 0.1
        assert model.blocks[0].mixer.n_heads == 2


@pytest.mark.parametrize("family", ["associative_recall", "induction_head"])
@pytest.mark.parametrize("layer,options,params", [
    ("gilr", {"output_gate": True, "activation": "linear", "dropout": 0.2}, 26_880),
    ("lru", {"output_gate": True, "d_state": 32, "dropout": 0.2}, 31_360),
    ("lstm", {"init": "xavier_orthogonal"}, 35_200),
    ("rwkv", {"init": "normal", "past_weights": "grow"}, 26_816),
])
def test_seq_icl_recurrent_layers_are_its_blocks(family, layer, options, params):
    """seq_icl's GILR and LRU are gated blocks, its LSTM and RWKV have their own initialisations, and its
    RWKV's weights grow into the past. The parameter counts are seq_icl's models' (vocabulary 40 or 16,
    tied head), counted from its layer code."""
    c = compose_experiment(f"synthetics/{family}/{layer}")
    assert c["model"]["mixer"] == {**c["model"]["mixer"], **options}
    vocab = c["task"]["vocab_size"]
    assert count_parameters(build_model(c["model"], build_task(c["task"]))) == params - 32 * (40 - vocab)


def test_induction_head_base_is_seq_icls_setting():
    c = compose_experiment("synthetics/induction_head/h3")
    assert (c["task"]["name"], c["task"]["vocab_size"], c["task"]["context_len"]) == ("induction_head", 16, 256)
    assert (c["data"]["train_size"], c["data"]["batch_size"]) == (5000, 8)
    assert (c["optim"]["lr"], c["optim"]["weight_decay"]) == (5e-4, 0.1)
    assert c["scheduler"] == {**c["scheduler"], "name": "cosine", "warmup_fraction": 0.1, "min_lr_ratio": 0.1,
                              "warmup_steps": None}
    assert c["trainer"]["max_steps"] == 400 * 5000 // 8


@pytest.mark.parametrize("family", ["associative_recall", "induction_head"])
def test_seq_icl_model_and_optimiser_follow_its_code_base(family):
    c = compose_experiment(f"synthetics/{family}/transformer")
    assert (c["model"]["init"], c["model"]["tie_embeddings"]) == ("gpt2", True)
    assert (tuple(c["optim"]["betas"]), c["trainer"]["gradient_clip_val"]) == ((0.9, 0.999), 0.0)
    assert c["optim"]["decay_vectors"] is True
    model = build_model(c["model"], build_task(c["task"]))
    assert model.head.weight is model.embed.weight
    assert model.blocks[0].mixer.out_proj.weight.std().item() < 0.01     # 0.02 / sqrt(16 branches)
    h3 = compose_experiment(f"synthetics/{family}/h3")
    mixer = build_model(h3["model"], build_task(h3["task"])).blocks[0].mixer
    assert mixer.diag.discretization == "bilinear" and mixer.shift_B is not None


@pytest.mark.parametrize("layer", [e.rsplit("/", 1)[1] for e in EXPERIMENTS
                                   if e.startswith("synthetics/mqar/") and e != "synthetics/mqar/seed000"])
@pytest.mark.parametrize("task", ["mqar_zoology_64", "mqar_zoology_512"])
def test_mqar_experiments_are_zoologys_two_layers_without_mlps(layer, task):
    c = compose_experiment(f"synthetics/mqar/{layer}", f"task={task}")
    built = build_task(c["task"])
    assert built.vocab_size == 8192 and built.seq_len == int(task.rsplit("_", 1)[1])
    model = build_model(c["model"], built)
    assert model.d_model == 128
    assert all(b.state_mixer is None for b in model.blocks)
    assert len(model.blocks) == 2
    if layer in ("based", "rebased"):
        assert mixers(model) == ["BaseConv", "Based" if layer == "based" else "ReBased"]
    assert built.random_non_queries is False
    if layer == "h3":
        assert model.blocks[0].mixer.d_state == built.seq_len


@pytest.mark.parametrize("layer", ["based", "rebased"])
def test_based_experiments_use_the_hybrid_models(layer):
    for family in ("synthetics/associative_recall", "synthetics/induction_head", "dfa"):
        c = compose_experiment(f"{family}/{layer}")
        model = build_model(c["model"], build_task(c["task"]))
        assert mixers(model) == ["BaseConv", "Based" if layer == "based" else "ReBased", "BaseConv",
                                 "SlidingWindowAttention"]


def test_dfa_training_set_follows_the_number_of_automata():
    c = compose_experiment("dfa/lstm", "task.num_train_automata=2500")
    assert c["data"]["train_size"] == 2500 and c["model"]["d_model"] == 256


def run_train(tmp_path, experiment, *overrides):
    cmd = [sys.executable, "-m", "train", f"experiment={experiment}", "trainer=debug", "trainer.max_steps=20",
           "trainer.val_check_interval=10", "callbacks.progress_bar=none", "data.train_size=64",
           "data.val_size=16", "data.test_size=16", "data.batch_size=8", *overrides, f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.parametrize("experiment,model", [("synthetics/associative_recall/transformer", "transformer"),
                                              ("synthetics/induction_head/lstm", "lstm")])
def test_experiment_trains_twenty_steps(tmp_path, experiment, model):
    res = run_train(tmp_path, experiment, "task.context_len=32")
    assert res["status"] == "completed" and res["steps"] == 20 and res["model"] == model
    assert 0.0 <= res["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize("layer,own", [("lstm", "LSTM"), ("mamba", "Mamba")])
def test_ngram_variants_add_three_ngram_blocks_to_the_recurrent_model(layer, own):
    c = compose_experiment(f"dfa/{layer}_ngram")
    model = build_model(c["model"], build_task(c["task"]))
    assert mixers(model) == [own] * 4 + ["NGram"] * 3
    assert [b.mixer.n for b in model.blocks[4:]] == [1, 2, 3]
    assert all(b.state_mixer is not None for b in model.blocks[4:])
    assert all((b.state_mixer is None) == (layer == "mamba") for b in model.blocks[:4])
