"""MQAR, associative recall and induction head against independent re-derivations."""

import pytest
import torch

import seqicl.tasks as tasks
from seqicl.errors import ConfigError


def latest_value(inputs, t):
    """The token that followed the latest earlier occurrence of inputs[t] (None if none)."""
    for s in range(t - 1, -1, -1):
        if inputs[s] == inputs[t]:
            return inputs[s + 1]
    return None


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_semantics(random_non_queries):
    task = tasks.build("mqar", vocab_size=40, seq_len=32, num_kv_pairs=5, random_non_queries=random_non_queries)
    batch = task.sample(64, seed=3)
    inputs, targets = batch["inputs"].tolist(), batch["targets"].tolist()
    for x, y in zip(inputs, targets):
        scored = [t for t, v in enumerate(y) if v != -100]
        assert len(scored) == 5
        keys = x[0:10:2]
        assert len(set(keys)) == 5 and all(1 <= k < 20 for k in keys)
        assert all(20 <= v < 40 for v in x[1:10:2]) and len(set(x[1:10:2])) == 5
        assert sorted(x[t] for t in scored) == sorted(keys)
        for t in scored:
            assert t >= 10 and t % 2 == 0
            assert y[t] == latest_value(x, t)
        if random_non_queries:
            assert sum(tok in keys for tok in x) == 10
        else:
            assert all(tok == 0 for t, tok in enumerate(x) if t >= 10 and t not in scored)


def test_mqar_power_law_prefers_early_queries():
    task = tasks.build("mqar", vocab_size=64, seq_len=128, num_kv_pairs=4, power_a=0.01)
    t = task.sample(2000, seed=0)["targets"]
    pos = (t != -100).nonzero()[:, 1].float()
    early = ((pos - 8) / 2 < 20).float().mean()
    assert early > 0.5  # uniform placement over 60 slots would give about 1/3


def test_associative_recall_semantics():
    task = tasks.build("associative_recall", vocab_size=12, context_len=20, key_len=1)
    b = task.sample(50, seed=1)
    assert b["inputs"].shape == (50, task.seq_len) == b["targets"].shape == b["loss_targets"].shape
    for x, y, lt in zip(b["inputs"].tolist(), b["targets"].tolist(), b["loss_targets"].tolist()):
        assert y[:-1] == [-100] * (len(y) - 1)
        assert x[-2] == task.copy_prefix
        query = x[-1]
        pairs = {x[i]: x[i + 1] for i in range(0, 20, 2)}
        assert query in pairs and y[-1] == pairs[query]
        # one key -> one value within a sequence
        for i in range(0, 20, 2):
            assert x[i + 1] == pairs[x[i]] and x[i] < task.num_key_tokens <= x[i + 1] < task.copy_prefix
        assert lt[:-1] == x[1:] and lt[-1] == y[-1]


def test_associative_recall_multi_token_keys_and_absent_queries():
    task = tasks.build("associative_recall", vocab_size=8, context_len=9, key_len=2, allow_absent_query=True,
                       train_all_tokens=False)
    b = task.sample(200, seed=2)
    assert "loss_targets" not in b
    absent = 0
    for x, y in zip(b["inputs"].tolist(), b["targets"].tolist()):
        pairs = {(x[i], x[i + 1]): x[i + 2] for i in range(0, 9, 3)}
        q = (x[-2], x[-1])
        if q in pairs:
            assert y[-1] == pairs[q]
        else:
            absent += 1
            assert y[-1] == task.noop
    assert 0 < absent < 200


def test_induction_head_semantics():
    task = tasks.build("induction_head", vocab_size=10, context_len=30, induction_len=2, num_triggers=3)
    b = task.sample(100, seed=4)
    multi = 0
    for x, y in zip(b["inputs"].tolist(), b["targets"].tolist()):
        cp = task.copy_prefix
        trig = [t for t in range(30) if x[t] == cp]
        assert trig and x[30] == cp
        copied = x[trig[0] + 1:trig[0] + 3]
        assert all(x[t + 1:t + 3] == copied for t in trig)
        assert y[-2:] == copied and y[:-2] == [-100] * (len(y) - 2)
        assert x[31] == copied[0]
        multi += len(trig) > 1
    assert 0 < multi < 100


@pytest.mark.parametrize("name,params", [
    ("mqar", dict(vocab_size=64, seq_len=32, num_kv_pairs=4)),
    ("associative_recall", dict(vocab_size=20, context_len=16)),
    ("induction_head", dict(vocab_size=12, context_len=16)),
])
def test_determinism_and_split_disjointness(name, params):
    task = tasks.build(name, **params)
    a, b, c = task.sample(16, seed=7), task.sample(16, seed=7), task.sample(16, seed=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["inputs"], c["inputs"])
    splits = tasks.make_splits(task, 300, 50, 50, seed=0)
    assert [tasks.splits.batch_size_of(splits[s]) for s in ("train", "val", "test")] == [300, 50, 50]
    rows = {s: {tuple(r) for r in splits[s]["inputs"].tolist()} for s in splits}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["val"] and not rows["val"] & rows["test"]
    assert len(rows["train"]) == 300
    again = tasks.make_splits(task, 100, 50, 50, seed=0)
    assert torch.equal(again["test"]["inputs"], splits["test"]["inputs"])


def test_assert_disjoint_catches_a_leak():
    task = tasks.build("mqar", vocab_size=64, seq_len=16, num_kv_pairs=2)
    splits = tasks.make_splits(task, 20, 5, 5, seed=0)
    splits["train"]["inputs"][0] = splits["test"]["inputs"][0]
    splits["train"]["targets"][0] = splits["test"]["targets"][0]
    with pytest.raises(AssertionError, match="shared between the train and test"):
        tasks.assert_disjoint(splits)


def test_too_small_support_is_an_error():
    task = tasks.build("induction_head", vocab_size=4, context_len=3)
    with pytest.raises(ConfigError, match="too few distinct examples"):
        tasks.make_splits(task, 1000, 10, 10, seed=0)


@pytest.mark.parametrize("name,params,match", [
    ("mqar", dict(seq_len=12, num_kv_pairs=4), "seq_len"),
    ("mqar", dict(vocab_size=8, num_kv_pairs=4), "vocab_size"),
    ("mqar", dict(power_a=0), "power_a"),
    ("mqar", dict(seq_len=3.5), "seq_len"),
    ("mqar", dict(random_non_queries="yes"), "random_non_queries"),
    ("associative_recall", dict(vocab_size=3), "vocab_size"),
    ("associative_recall", dict(key_len=0), "key_len"),
    ("induction_head", dict(context_len=2, induction_len=1), "context_len"),
    ("induction_head", dict(num_triggers=0), "num_triggers"),
])
def test_bad_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        tasks.build(name, **params)


def test_unknown_names():
    with pytest.raises(ConfigError, match="registered tasks: .*mqar"):
        tasks.build("mqr")
    with pytest.raises(ConfigError, match="no parameter 'num_kv'.*num_kv_pairs"):
        tasks.build("mqar", num_kv=3)
    with pytest.raises(ValueError, match="n must be >= 1"):
        tasks.build("mqar").sample(0)


@pytest.mark.parametrize("name,params", [
    ("mqar", dict(vocab_size=64, seq_len=32, num_kv_pairs=4)),
    ("associative_recall", dict(vocab_size=20, context_len=16)),
    ("associative_recall", dict(vocab_size=20, context_len=16, train_all_tokens=False)),
    ("induction_head", dict(vocab_size=12, context_len=16, induction_len=2, train_all_tokens=False)),
])
def test_train_scored_per_example_is_exact(name, params):
    task = tasks.build(name, **params)
    b = task.sample(50, seed=0)
    counts = (b.get("loss_targets", b["targets"]) != -100).sum(dim=1)
    assert (counts == task.train_scored_per_example).all()


def test_fixed_count_loss_equals_masked_loss():
    from seqicl.models import TokenLM
    from seqicl.training.objectives import cross_entropy

    task = tasks.build("mqar", vocab_size=64, seq_len=32, num_kv_pairs=4)
    torch.manual_seed(0)
    model = TokenLM(64, 32, d_model=16, n_layers=1)
    batch = task.sample(8, seed=1)
    fast, fast_stats = cross_entropy(model, batch, task, train=True)
    slow, slow_stats = cross_entropy(model, batch, task, train=False)
    torch.testing.assert_close(fast, slow)
    assert fast_stats["accuracy"][0] == slow_stats["accuracy"][0]
