"""The MAD tasks and the auto-encoder backbone.

Each task's semantics are re-derived here in plain Python over a few examples, independently of
the vectorised generators: the generators must agree with these readings of the MAD paper.
"""

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
from seqicl.tasks.splits import example_hashes

ROOT = Path(__file__).resolve().parents[1]
IGN = -100

# Small settings for the semantic checks (the defaults are MAD's baselines).
SMALL = {
    "in_context_recall": dict(vocab_size=10, seq_len=24),
    "noisy_in_context_recall": dict(vocab_size=14, seq_len=31, noise_vocab_size=4, frac_noise=0.3),
    "fuzzy_in_context_recall": dict(vocab_size=12, seq_len=40, k_motif_size=3, v_motif_size=2, num_kv_pairs=4),
    "selective_copying": dict(vocab_size=7, seq_len=20, num_tokens_to_copy=5),
    "compression": dict(vocab_size=6, seq_len=9),
    "memorization": dict(vocab_size=24, seq_len=11, map_seed=3),
}
MAD = sorted(SMALL)


def rows(batch):
    return [{k: v[i].tolist() for k, v in batch.items()} for i in range(batch["inputs"].shape[0])]


# ---------------------------------------------------------------------------------------------
# independent re-derivations


def check_in_context_recall(task, row):
    V, L = task.vocab_size, task.seq_len
    x, y = row["inputs"], row["targets"]
    nk = V // 2
    bound = {}
    for t in range(L):
        if t % 2 == 0:
            assert 0 <= x[t] < nk, "even positions hold keys"
            if t + 1 < L:
                assert nk <= x[t + 1] < V, "a value follows every key"
                assert bound.setdefault(x[t], x[t + 1]) == x[t + 1], "a key keeps its value within a sequence"
            earlier = x[t] in x[0:t:2]
            if earlier:
                assert y[t] == bound[x[t]], "a recalled key's target is its bound value"
            else:
                assert y[t] == IGN, "first occurrences are not scored"
        else:
            assert y[t] == IGN
    values = list(bound.values())
    assert len(set(values)) == len(values), "the key->value map is one-to-one"


def check_noisy_in_context_recall(task, row):
    V, L, Vn = task.vocab_size, task.seq_len, task.noise_vocab_size
    x, y = row["inputs"], row["targets"]
    clean = V - Vn
    nk = clean // 2
    is_noise = [tok >= clean for tok in x]
    n_noise = sum(is_noise)
    assert n_noise == round(task.frac_noise * L)
    seen, bound, t = set(), {}, 0
    while t < L:
        if is_noise[t]:
            assert clean <= x[t] < V and y[t] == IGN, "noise comes from the noise vocabulary, never scored"
            t += 1
            continue
        assert x[t] < nk, "outside noise, a key starts every pair"
        if t + 1 < L:
            assert nk <= x[t + 1] < clean, "the key's value follows it directly"
            assert bound.setdefault(x[t], x[t + 1]) == x[t + 1]
            assert y[t + 1] == IGN
        if x[t] in seen:
            assert y[t] == bound[x[t]]
        else:
            assert y[t] == IGN
        seen.add(x[t])
        t += 2


def segments(x, is_key):
    """Maximal runs of key tokens and of value tokens: [(is_key, start, end)]."""
    out, start = [], 0
    for t in range(1, len(x) + 1):
        if t == len(x) or is_key(x[t]) != is_key(x[start]):
            out.append((is_key(x[start]), start, t))
            start = t
    return out


def check_fuzzy_in_context_recall(task, row):
    V, L = task.vocab_size, task.seq_len
    x, y = row["inputs"], row["targets"]
    nk = V // 2
    segs = segments(x, lambda tok: tok < nk)
    assert segs[0][0], "a sequence starts with a key"
    expected = [IGN] * L
    bound = {}
    complete_keys = set()
    for i in range(0, len(segs) - 1, 2):
        (kk, ks, ke), (vk, vs, ve) = segs[i], segs[i + 1]
        assert kk and not vk, "keys and values alternate"
        key, value = tuple(x[ks:ke]), tuple(x[vs:ve])
        assert 1 <= len(key) <= task.k_motif_size
        assert 1 <= len(value) <= task.v_motif_size
        complete_keys.add(key)
        last_value = i + 1 == len(segs) - 1
        if key in bound:
            b = bound[key]
            assert value == b[:len(value)] and (last_value or value == b), "a key keeps its value motif"
            for j, pos in enumerate(range(ke - 1, min(ke - 1 + len(b), L))):
                expected[pos] = b[j]
        elif not last_value:
            bound[key] = value
    assert len(complete_keys) <= task.num_kv_pairs
    for a in complete_keys:
        for b in complete_keys:
            assert a == b or b[:len(a)] != a, "keys are prefix-free"
    if len(segs) % 2 == 1:  # the sequence ends inside a key, maybe cut short: nothing there is scored,
        last = segs[-1]     # except the first value token of a complete recalled key
        for pos in range(last[1], L - 1):
            assert y[pos] == IGN
        key = tuple(x[last[1]:last[2]])
        assert y[L - 1] == IGN or (key in bound and y[L - 1] == bound[key][0])
        y = y[:last[1]] + expected[last[1]:]
    assert y == expected


def check_selective_copying(task, row):
    V, L, k = task.vocab_size, task.seq_len, task.num_tokens_to_copy
    x, y = row["inputs"], row["targets"]
    ctx = x[:L - k]
    content = [tok for tok in ctx if tok != task.noise_token]
    assert len(content) == k and all(2 <= tok < V for tok in content)
    assert x[L - k] == task.copy_token
    assert x[L - k + 1:] == content[:-1], "the copy so far is read back"
    assert y[:L - k] == [IGN] * (L - k)
    assert y[L - k:] == content, "targets are the content tokens, in order"


def check_compression(task, row):
    assert row["targets"] == row["inputs"], "the decoder's targets are the input tokens"
    assert all(0 <= tok < task.vocab_size for tok in row["inputs"])


def check_memorization(task, row, facts):
    V, L = task.vocab_size, task.seq_len
    x, y = row["inputs"], row["targets"]
    nk = V // 2
    keys = x[0::2]
    assert len(set(keys)) == len(keys), "keys are distinct within a sequence"
    for t in range(L):
        if t % 2 == 0:
            assert 0 <= x[t] < nk and nk <= y[t] < V
            assert facts.setdefault(x[t], y[t]) == y[t], "one value per key in every sequence"
            if t + 1 < L:
                assert x[t + 1] == y[t]
        else:
            assert y[t] == IGN


CHECKS = {
    "in_context_recall": check_in_context_recall,
    "noisy_in_context_recall": check_noisy_in_context_recall,
    "fuzzy_in_context_recall": check_fuzzy_in_context_recall,
    "selective_copying": check_selective_copying,
    "compression": check_compression,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
@pytest.mark.parametrize("params", ["small", "default"])
def test_semantics_rederived(name, params):
    task = tasks.build(name, **(SMALL[name] if params == "small" else {}))
    for seed in (0, 1):
        for row in rows(task.sample(6, seed=seed)):
            CHECKS[name](task, row)


def test_recall_tasks_score_something():
    for name in ("in_context_recall", "noisy_in_context_recall", "fuzzy_in_context_recall"):
        b = tasks.build(name, **SMALL[name]).sample(32, seed=0)
        assert (b["targets"] != IGN).sum(dim=1).float().mean() >= 2


def test_memorization_map_is_fixed_across_samples_splits_and_instances():
    facts = {}
    for seed in (0, 1, 7):
        task = tasks.build("memorization", **SMALL["memorization"])
        for row in rows(task.sample(8, seed=seed)):
            check_memorization(task, row, facts)
        for split in tasks.make_splits(task, 32, 8, 8, seed=seed).values():
            for row in rows(split):
                check_memorization(task, row, facts)
    assert len(facts) > 8
    assert all(task.value_map()[k] == v for k, v in facts.items())
    other = tasks.build("memorization", **{**SMALL["memorization"], "map_seed": 4})
    assert not torch.equal(other.value_map(), task.value_map()), "map_seed chooses the map"


def test_fuzzy_keys_have_variable_lengths():
    task = tasks.build("fuzzy_in_context_recall", **SMALL["fuzzy_in_context_recall"])
    tokens, lengths = task._draw_keys(64, torch.Generator().manual_seed(0))
    assert set(lengths.unique().tolist()) == {1, 2, 3}


def test_noise_fraction_follows_frac_noise():
    for frac in (0.0, 0.5):
        task = tasks.build("noisy_in_context_recall", **{**SMALL["noisy_in_context_recall"], "frac_noise": frac})
        x = task.sample(16, seed=0)["inputs"]
        noise = (x >= task.vocab_size - task.noise_vocab_size).sum(dim=1)
        assert (noise == round(frac * task.seq_len)).all()


# ---------------------------------------------------------------------------------------------
# generic properties


@pytest.mark.parametrize("name", MAD)
def test_shapes_dtypes_and_determinism(name):
    task = tasks.build(name, **SMALL[name])
    a, b, c = task.sample(5, seed=3), task.sample(5, seed=3), task.sample(5, seed=4)
    assert set(a) == {"inputs", "targets"}
    for k in a:
        assert a[k].dtype == torch.long and a[k].shape == (5, task.seq_len)
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["inputs"], c["inputs"])
    assert ((a["targets"] == IGN) | ((a["targets"] >= 0) & (a["targets"] < task.vocab_size))).all()
    assert ((a["inputs"] >= 0) & (a["inputs"] < task.vocab_size)).all()
    assert 0 < task.random_guess_accuracy() < 1


@pytest.mark.parametrize("name", MAD)
def test_splits_are_disjoint(name):
    task = tasks.build(name, **SMALL[name])
    splits = tasks.make_splits(task, 64, 16, 16, seed=0)
    seen = {}
    for split, batch in splits.items():
        assert batch["inputs"].shape[0] == {"train": 64, "val": 16, "test": 16}[split]
        for row in rows(batch):
            key = (tuple(row["inputs"]), tuple(row["targets"]))
            assert seen.setdefault(key, split) == split, f"an example is in {seen[key]} and {split}"
    assert len(set(example_hashes(splits["train"]).tolist())) == 64


# (parameter, bad value[, other parameters the case needs])
BAD = {
    "in_context_recall": [("vocab_size", 3), ("vocab_size", 8.0), ("seq_len", 3), ("num_train_examples", 0)],
    "noisy_in_context_recall": [("vocab_size", 4), ("seq_len", 2), ("noise_vocab_size", 0),
                                ("noise_vocab_size", 11), ("frac_noise", -0.1), ("frac_noise", 1.5),
                                ("frac_noise", 0.95), ("frac_noise", "x"), ("num_train_examples", -1)],
    "fuzzy_in_context_recall": [("vocab_size", 2), ("seq_len", 1), ("k_motif_size", 0), ("v_motif_size", 0),
                                ("num_kv_pairs", 0), ("num_kv_pairs", 7), ("num_train_examples", 0)],
    "selective_copying": [("vocab_size", 2), ("seq_len", 1), ("num_tokens_to_copy", 0),
                          ("num_tokens_to_copy", 11), ("num_train_examples", 0)],
    "compression": [("vocab_size", 1), ("seq_len", 0), ("num_train_examples", True)],
    "memorization": [("vocab_size", 3), ("vocab_size", 20, {"seq_len": 24}), ("seq_len", 1), ("map_seed", -1),
                     ("map_seed", 1.5), ("num_train_examples", 0)],
}
VALID = {**SMALL, "fuzzy_in_context_recall": dict(vocab_size=4, k_motif_size=1, num_kv_pairs=2)}


@pytest.mark.parametrize("name", MAD)
def test_every_parameter_is_validated(name):
    checked = {case[0] for case in BAD[name]}
    assert checked == set(tasks.parameters(name)), f"untested parameters: {set(tasks.parameters(name)) - checked}"
    tasks.build(name, **VALID[name])
    for param, value, *extra in BAD[name]:
        with pytest.raises(ValueError, match=param):
            tasks.build(name, **{**VALID[name], **(extra[0] if extra else {}), param: value})
    with pytest.raises(ValueError, match="n must"):
        tasks.build(name, **SMALL[name]).sample(0)


def test_fuzzy_recall_refuses_key_sets_too_hard_to_draw():
    with pytest.raises(ValueError, match="num_kv_pairs"):
        tasks.build("fuzzy_in_context_recall", vocab_size=8, k_motif_size=2, num_kv_pairs=16)


def test_fuzzy_recall_scores_every_sequence_down_to_its_shortest_length():
    kwargs = dict(vocab_size=8, k_motif_size=2, v_motif_size=1, num_kv_pairs=3)
    with pytest.raises(ValueError, match="seq_len >= 11"):
        tasks.build("fuzzy_in_context_recall", seq_len=10, **kwargs)
    batch = tasks.build("fuzzy_in_context_recall", seq_len=11, **kwargs).sample(2000, seed=3)
    assert bool((batch["targets"] != -100).any(dim=1).all())


def test_config_files_list_every_parameter():
    for name in MAD:
        cfg = yaml.safe_load((ROOT / "configs" / "task" / f"{name}.yaml").read_text())
        assert cfg.pop("name") == name
        assert cfg == tasks.parameters(name), name


# ---------------------------------------------------------------------------------------------
# the auto-encoder backbone

MODEL = {"backbone": "auto", "d_model": 16, "n_layers": 2, "mixer": {"name": "attention", "n_heads": 2},
         "state_mixer": "swiglu", "positions": "learned"}


def test_compression_is_served_by_the_autoencoder():
    task = tasks.build("compression", **SMALL["compression"])
    model = build_model(MODEL, task)
    assert type(model).__name__ == "AutoEncoder"
    x = task.sample(3, seed=0)["inputs"]
    assert model(x).shape == (3, task.seq_len, task.vocab_size)
    torch.testing.assert_close(model.hidden(x), model.decode(model.encode(x), task.seq_len))
    lm = build_model({**MODEL, "backbone": "token_lm"}, task)
    assert type(lm).__name__ == "TokenLM"


def test_autoencoder_code_sees_every_token_and_decoder_sees_only_the_code():
    torch.manual_seed(0)
    task = tasks.build("compression", **SMALL["compression"])
    model = build_model(MODEL, task).eval()
    x = task.sample(2, seed=0)["inputs"]
    code = model.encode(x)
    for t in range(task.seq_len):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % task.vocab_size
        assert not torch.allclose(model.encode(x2), code), f"the code ignores token {t}"
    # Two sequences with the same code decode identically: the decoder has no other input.
    swapped = model.head(model.decode(code.flip(0), task.seq_len))
    torch.testing.assert_close(swapped, model(x.flip(0)))


def test_autoencoder_trains_through_the_cross_entropy_objective():
    from seqicl.training.objectives import objective_fn
    task = tasks.build("compression", **SMALL["compression"])
    model = build_model(MODEL, task)
    loss, stats = objective_fn(task.objective)(model, task.sample(4, seed=0), task, train=True)
    loss.backward()
    assert stats["accuracy"][1] == 4 * task.seq_len
    assert model.aggregate.grad is not None and model.embed.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# configs and the training entry point


@pytest.mark.parametrize("name", MAD)
def test_mad_experiment_config(name):
    from hydra import compose, initialize_config_dir

    from seqicl.training.config import validate
    from seqicl.training.run import build_task

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment=mad/{name}", "paths.output_dir=unused"])
    c = validate(cfg)
    assert c["task"]["name"] == name
    assert c["model"]["d_model"] == 128 and c["model"]["n_layers"] == 2
    assert c["model"]["mixer"]["name"] == "attention" and c["model"]["state_mixer"]["name"] == "swiglu"
    assert c["optim"]["lr"] == 5e-4 and c["data"]["batch_size"] == 128
    assert c["data"]["train_size"] == c["task"]["num_train_examples"]
    assert c["data"]["test_size"] == 1280
    task = build_task(c["task"])
    assert type(build_model(c["model"], task)).__name__ == ("AutoEncoder" if name == "compression" else "TokenLM")


def run_train(tmp_path, *overrides):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train", "trainer=debug", "callbacks.progress_bar=none", "data.val_size=32",
           "data.test_size=32", "data.batch_size=16", "model.d_model=32", f"hydra.run.dir={tmp_path}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "results.json").read_text())


def test_train_in_context_recall(tmp_path):
    res = run_train(tmp_path, "task=in_context_recall", "task.seq_len=32")
    assert res["task"] == "in_context_recall" and res["task_params"]["seq_len"] == 32
    assert res["steps"] == 20
    assert 0.0 <= res["test"]["accuracy"] <= 1.0 and res["test"]["scored"] > 32
    assert res["val"]["scored"] > 0


def test_train_compression(tmp_path):
    res = run_train(tmp_path, "task=compression", "task.seq_len=16")
    assert res["task"] == "compression" and res["steps"] == 20
    assert res["test"]["scored"] == 32 * 16, "every token of every test example is scored"
    assert 0.0 <= res["test"]["accuracy"] <= 1.0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert "model.aggregate" in state, "the auto-encoder backbone was trained"
