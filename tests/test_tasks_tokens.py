"""Token tasks beyond MAD: set disjointness, copying, and MQAR's zoology presets and multi-slice
length-extrapolation task. Semantics are re-derived in plain Python over a few examples."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import seqicl.tasks as tasks
from seqicl.models import build_model
from seqicl.tasks.datamodule import TaskDataModule
from seqicl.training.objectives import objective_fn

ROOT = Path(__file__).resolve().parents[1]
TASK_CONFIGS = ROOT / "configs" / "task"
IGN = -100

SMALL = {
    "disjoint_sets": dict(vocab_size=14, size_a=3, size_b=5),
    "copying": dict(vocab_size=6, string_len=5, train_all_tokens=True),
    "mqar_multi": dict(vocab_size=40, train_slices=[[8, 2], [12, 3]], test_slices=[[8, 2], [16, 4], [24, 5]]),
}
NAMES = sorted(SMALL)


def rows(batch):
    return [{k: v[i].tolist() for k, v in batch.items()} for i in range(batch["inputs"].shape[0])]


# ---------------------------------------------------------------------------------------------
# independent re-derivations


def check_disjoint_sets(task, row):
    a, b = task.size_a, task.size_b
    x, y = row["inputs"], row["targets"]
    assert len(x) == a + b + 2
    assert x[a] == task.sep_token and x[-1] == task.answer_token
    set_a, set_b = x[:a], x[a + 1:a + 1 + b]
    assert all(2 <= tok < task.vocab_size for tok in set_a + set_b)
    assert len(set(set_a)) == a and len(set(set_b)) == b, "elements are distinct within a set"
    shared = set(set_a) & set(set_b)
    assert len(shared) == 1, "the sets share exactly one element"
    assert y[:-1] == [IGN] * (len(x) - 1) and y[-1] == shared.pop(), "the shared element is the one target"


def check_copying(task, row):
    n = task.string_len
    x, y = row["inputs"], row["targets"]
    s = x[:n]
    assert all(0 <= tok < task.vocab_size - 1 for tok in s)
    assert x[n] == task.copy_token and x[n + 1:] == s[:-1]
    assert y[:n] == [IGN] * n and y[n:] == s, "the copy part is scored: the string, in order"
    if task.train_all_tokens:
        assert row["loss_targets"] == x[1:] + [s[-1]], "training scores every next token"
    else:
        assert "loss_targets" not in row


def check_mqar(row, vocab_size, L, k):
    """zoology MQAR: k pairs first (distinct keys in [1, V/2), distinct values in [V/2, V)), then each
    key queried exactly once; the target at a query is the key's value."""
    x, y = row["inputs"][:L], row["targets"][:L]
    half = vocab_size // 2
    keys, values = x[0:2 * k:2], x[1:2 * k:2]
    assert len(set(keys)) == k and all(1 <= t < half for t in keys)
    assert len(set(values)) == k and all(half <= t < vocab_size for t in values)
    bound = dict(zip(keys, values))
    scored = [t for t in range(L) if y[t] != IGN]
    assert len(scored) == k and min(scored) >= 2 * k
    assert sorted(x[t] for t in scored) == sorted(keys), "every key is queried once"
    for t in scored:
        assert y[t] == bound[x[t]]
    for t in range(2 * k, L):
        assert t in scored or x[t] not in bound, "a key occurs only in its pair and its query"


def check_mqar_multi(task, row, slices):
    L, k = row["seq_len"], row["num_kv_pairs"]
    assert [L, k] in [list(s) for s in slices]
    assert len(row["inputs"]) == task.seq_len == max(s[0] for s in task.train_slices + task.test_slices)
    assert row["inputs"][L:] == [0] * (task.seq_len - L), "padding is token 0"
    assert row["targets"][L:] == [IGN] * (task.seq_len - L), "padding is never scored"
    check_mqar(row, task.vocab_size, L, k)


def test_disjoint_sets_semantics():
    for params in (SMALL["disjoint_sets"], {}, dict(vocab_size=9, size_a=1, size_b=6)):
        task = tasks.build("disjoint_sets", **params)
        for seed in (0, 1):
            for row in rows(task.sample(8, seed=seed)):
                check_disjoint_sets(task, row)


def test_disjoint_sets_shared_element_position_varies():
    task = tasks.build("disjoint_sets", **SMALL["disjoint_sets"])
    pos_a, pos_b = set(), set()
    for row in rows(task.sample(64, seed=0)):
        x, shared = row["inputs"], row["targets"][-1]
        pos_a.add(x.index(shared))
        pos_b.add(x.index(shared, task.size_a + 1))
    assert pos_a == set(range(task.size_a))
    assert pos_b == set(range(task.size_a + 1, task.size_a + 1 + task.size_b))


@pytest.mark.parametrize("train_all_tokens", [True, False])
def test_copying_semantics(train_all_tokens):
    task = tasks.build("copying", **{**SMALL["copying"], "train_all_tokens": train_all_tokens})
    for seed in (0, 1):
        for row in rows(task.sample(6, seed=seed)):
            check_copying(task, row)


def test_mqar_multi_semantics_per_split():
    task = tasks.build("mqar_multi", **SMALL["mqar_multi"])
    for split, slices in (("train", task.train_slices), ("val", task.test_slices), ("test", task.test_slices)):
        batch = task.split_view(split, 0).sample(30, seed=1)
        seen = [(r["seq_len"], r["num_kv_pairs"]) for r in rows(batch)]
        for row in rows(batch):
            check_mqar_multi(task, row, slices)
        counts = [seen.count(tuple(s)) for s in slices]
        assert max(counts) - min(counts) <= 1, "slices come in equal shares"


@pytest.mark.parametrize("name", ["mqar_zoology_64", "mqar_zoology_128", "mqar_zoology_256", "mqar_zoology_512"])
def test_zoology_presets(name):
    cfg = yaml.safe_load((TASK_CONFIGS / f"{name}.yaml").read_text())
    assert cfg["name"] == "mqar" and cfg["vocab_size"] == 8192
    L = int(name.rsplit("_", 1)[1])
    assert (cfg["seq_len"], cfg["num_kv_pairs"]) == {64: (64, 4), 128: (128, 8), 256: (256, 16), 512: (512, 64)}[L]
    task = tasks.build(cfg.pop("name"), **cfg)
    for row in rows(task.sample(3, seed=0)):
        check_mqar(row, task.vocab_size, task.seq_len, task.num_kv_pairs)


# ---------------------------------------------------------------------------------------------
# generic properties


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_determinism(name):
    task = tasks.build(name, **SMALL[name])
    a, b, c = task.sample(6, seed=3), task.sample(6, seed=3), task.sample(6, seed=4)
    for k, v in a.items():
        assert v.dtype == torch.long and v.shape[0] == 6
        assert torch.equal(v, b[k])
    for k in ("inputs", "targets"):
        assert a[k].shape == (6, task.seq_len)
    assert not torch.equal(a["inputs"], c["inputs"])
    assert ((a["inputs"] >= 0) & (a["inputs"] < task.vocab_size)).all()
    assert 0 < task.random_guess_accuracy() < 1


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint(name):
    task = tasks.build(name, **SMALL[name])
    splits = tasks.make_splits(task, 64, 16, 16, seed=0)
    seen = {}
    for split, batch in splits.items():
        for row in rows(batch):
            key = (tuple(row["inputs"]), tuple(row["targets"]))
            assert seen.setdefault(key, split) == split, f"an example is in {seen[key]} and {split}"


def test_mqar_multi_splits_overlap_in_slices_not_in_examples():
    task = tasks.build("mqar_multi", vocab_size=8, train_slices=[[8, 2]], test_slices=[[8, 2], [12, 3]])
    splits = tasks.make_splits(task, 200, 100, 100, seed=0)  # few distinct (8, 2) examples: clashes are likely
    train = {tuple(r["inputs"]) for r in rows(splits["train"])}
    evaluated = {tuple(r["inputs"]) for s in ("val", "test") for r in rows(splits[s])}
    assert not train & evaluated
    assert set(splits["train"]["seq_len"].tolist()) == {8}
    assert set(splits["test"]["seq_len"].tolist()) == {8, 12}


@pytest.mark.parametrize("train_size", [None, 32])
def test_mqar_multi_data_module(train_size):
    task = tasks.build("mqar_multi", **SMALL["mqar_multi"])
    dm = TaskDataModule(task, batch_size=8, train_size=train_size, val_size=24, test_size=24, steps_per_epoch=4)
    dm.setup()
    for split in ("val", "test"):
        assert set(dm.splits[split]["seq_len"].tolist()) == {8, 16, 24}
    train_lengths = {L for batch in dm.train_dataloader() for L in batch["seq_len"].tolist()}
    assert train_lengths == {8, 12}


def test_mqar_multi_reports_accuracy_per_test_slice():
    task = tasks.build("mqar_multi", **SMALL["mqar_multi"])
    batch = task.split_view("test", 0).sample(12, seed=0)
    mask = batch["targets"] != IGN
    y = batch["targets"][mask]
    right_for_8 = (batch["seq_len"][:, None].expand_as(mask)[mask] == 8)
    logits = torch.zeros(y.numel(), task.vocab_size)
    logits[torch.arange(y.numel()), torch.where(right_for_8, y, (y + 1) % task.vocab_size)] = 1.0
    stats = task.eval_stats(batch, mask=mask, logits=logits)
    assert set(stats) == {"accuracy_seq8_kv2", "accuracy_seq16_kv4", "accuracy_seq24_kv5"}
    for name, (s, c) in stats.items():
        k = int(name.rsplit("kv", 1)[1])
        assert c == 4 * k, "each slice holds a third of the 12 examples, k scored positions each"
        assert s == (c if name == "accuracy_seq8_kv2" else 0)
    # The objective passes them on with the overall accuracy.
    model = build_model({"d_model": 16, "n_layers": 1, "mixer": "attention", "state_mixer": None}, task)
    _, out = objective_fn(task.objective)(model, batch, task, train=False)
    assert {"accuracy", "accuracy_seq24_kv5"} <= set(out)


# ---------------------------------------------------------------------------------------------
# parameter validation and configs

BAD = {
    "disjoint_sets": [("vocab_size", 2), ("vocab_size", 8), ("size_a", 0), ("size_a", 2.0), ("size_b", 0)],
    "copying": [("vocab_size", 2), ("string_len", 0), ("train_all_tokens", "yes")],
    "mqar_multi": [("vocab_size", 3), ("train_slices", []), ("train_slices", [[8]]), ("train_slices", [[8, 4]]),
                   ("train_slices", "8,2"), ("train_slices", [[8, 2], [8, 2]]), ("test_slices", [[16, 2.5]]),
                   ("test_slices", [[8, 30]]), ("power_a", 0.0), ("random_non_queries", 1)],
}


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_is_validated(name):
    assert {p for p, _ in BAD[name]} == set(tasks.parameters(name))
    for param, value in BAD[name]:
        with pytest.raises(ValueError, match=param):
            tasks.build(name, **{**SMALL[name], param: value})
    with pytest.raises(ValueError, match="n must"):
        tasks.build(name, **SMALL[name]).sample(0)


def test_split_view_names_are_checked():
    task = tasks.build("mqar_multi", **SMALL["mqar_multi"])
    with pytest.raises(ValueError, match="split"):
        task.split_view("valid", 0)
    assert tasks.build("copying").split_view("test", 0).name == "copying"


def test_config_files_list_every_parameter():
    for path in sorted(TASK_CONFIGS.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        name = cfg.pop("name")
        if name not in NAMES + ["mqar"]:
            continue
        params = tasks.parameters(name)
        assert set(cfg) == set(params), path.name
        if path.stem == name and name in NAMES:
            assert tasks.build(name, **cfg).params() == tasks.build(name).params(), f"{path.name} != defaults"


def compose(*overrides):
    from hydra import compose, initialize_config_dir

    from seqicl.training.config import validate

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return validate(compose("train", overrides=[*overrides, "paths.output_dir=unused"]))


@pytest.mark.parametrize("task", [None, "mqar_zoology_64", "mqar_zoology_512", "mqar_multi"])
def test_mqar_transformer_experiment(task):
    c = compose("experiment=synthetics/mqar/transformer", *([f"task={task}"] if task else []))
    assert c["task"]["name"] == ("mqar_multi" if task == "mqar_multi" else "mqar")
    assert c["task"]["vocab_size"] == 8192
    m = c["model"]
    assert (m["d_model"], m["n_layers"], m["state_mixer"], m["positions"]) == (128, 2, None, "learned")
    assert m["mixer"]["name"] == "attention" and c["optim"]["lr"] == 1e-3
    model = build_model(m, tasks.build(**c["task"]))
    assert all(block.state_mixer is None for block in model.blocks)


def test_train_mqar_multi_reports_slices(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train", "task=mqar_multi", "task.vocab_size=32",
           "task.train_slices=[[8,2],[12,3]]", "task.test_slices=[[8,2],[16,4]]", "trainer=debug",
           "trainer.max_steps=4", "trainer.val_check_interval=2", "callbacks.progress_bar=none",
           "data.val_size=16", "data.test_size=16", "data.batch_size=8", "model.d_model=16",
           "model.positions=learned", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["task_params"]["test_slices"] == [[8, 2], [16, 4]]
    for split in ("val", "test"):
        assert {"accuracy", "accuracy_seq8_kv2", "accuracy_seq16_kv4"} <= set(res[split])
