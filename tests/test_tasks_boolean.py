"""Boolean-function tasks, each label recomputed independently from the returned function."""

import pytest
import torch
from train_run import run_train

import seqicl.tasks as tasks
from seqicl.training.objectives import objective_fn

BOOLEAN = ["conjunction", "disjunction", "dnf3", "cnf3", "parity", "sparse_parity", "majority"]
ENCODINGS = ["zero_one", "plus_minus"]


def bits_of(task, xs):
    """The input bits as nested lists of 0/1 ints, whatever the encoding."""
    values = xs if task.encoding == "zero_one" else (xs + 1) / 2
    assert set(values.unique().tolist()) <= {0.0, 1.0}
    return values.long().tolist()


def literal_true(bit, literal):
    return bit == 1 if literal == 1 else bit == 0


def formula_label(bits, terms, outer):
    """OR of ANDs (outer='or', a DNF) or AND of ORs (outer='and', a CNF), written out."""
    values = []
    for term in terms:
        lits = [(i, lit) for i, lit in enumerate(term) if lit != 0]
        if outer == "or":
            values.append(all(literal_true(bits[i], lit) for i, lit in lits))
        else:
            values.append(any(literal_true(bits[i], lit) for i, lit in lits))
    return int(any(values) if outer == "or" else all(values))


def test_all_registered_and_continuous():
    for name in BOOLEAN:
        task = tasks.build(name)
        assert name in tasks.available()
        assert task.kind == "continuous" and task.objective == "bce" and not task.finite_support
        assert task.backbone == "continuous" and task.seq_len == 2 * task.n_points
        assert task.selection_metric == "accuracy" and task.curriculum is None


@pytest.mark.parametrize("name", BOOLEAN)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_shapes_encoding_and_determinism(name, encoding):
    task = tasks.build(name, n_dims=6, n_points=10, encoding=encoding)
    a, b = task.sample(4, seed=2), task.sample(4, seed=2)
    assert a["xs"].shape == (4, 10, 6) and a["xs"].dtype == torch.float32
    assert a["ys"].shape == (4, 10) and set(a["ys"].unique().tolist()) <= {0.0, 1.0}
    assert bool(a["mask"].all())
    expected = {0.0, 1.0} if encoding == "zero_one" else {-1.0, 1.0}
    assert set(a["xs"].unique().tolist()) == expected
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["xs"], task.sample(4, seed=3)["xs"])


@pytest.mark.parametrize("name,key,outer", [("conjunction", "literals", "or"), ("disjunction", "literals", "and"),
                                             ("dnf3", "terms", "or"), ("cnf3", "clauses", "and")])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_formula_labels_recomputed(name, key, outer, encoding):
    task = tasks.build(name, n_dims=8, n_points=20, encoding=encoding)
    b = task.sample(12, seed=0)
    formulas = b[key].tolist()
    bits, ys = bits_of(task, b["xs"]), b["ys"].long().tolist()
    for i in range(12):
        terms = [formulas[i]] if key == "literals" else formulas[i]
        assert all(set(t) <= {-1, 0, 1} for t in terms)
        minimum = 1 if key == "literals" else 2
        assert all(sum(lit != 0 for lit in t) >= minimum for t in terms)
        if key != "literals":
            assert len(terms) == 3
        for p in range(20):
            assert ys[i][p] == formula_label(bits[i][p], terms, outer)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_majority_recomputed(encoding):
    task = tasks.build("majority", n_dims=9, n_points=20, encoding=encoding)
    b = task.sample(12, seed=0)
    subsets, bits, ys = b["subset"].tolist(), bits_of(task, b["xs"]), b["ys"].long().tolist()
    for i in range(12):
        members = [j for j, on in enumerate(subsets[i]) if on]
        assert len(members) % 2 == 1
        for p in range(20):
            ones = sum(bits[i][p][j] for j in members)
            assert ys[i][p] == int(2 * ones > len(members))


def solve_gf2(rows, labels, n):
    """A solution s of <row, s> = label (mod 2) for every row, by Gaussian elimination; None if
    the system is inconsistent. Rows and s are ints used as bit vectors."""
    pivots = []  # (pivot bit, row, label), each row reduced against the earlier pivots
    for row, label in zip(rows, labels):
        for bit, prow, plabel in pivots:
            if row >> bit & 1:
                row, label = row ^ prow, label ^ plabel
        if row == 0:
            if label:
                return None, len(pivots)
            continue
        pivots.append((row.bit_length() - 1, row, label))
    s = 0
    for bit, row, label in reversed(pivots):
        rest = row & ~(1 << bit)
        value = label ^ (bin(rest & s).count("1") % 2)
        s |= value << bit
    return s, len(pivots)


@pytest.mark.parametrize("name", ["parity", "sparse_parity"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_parity_labels_are_a_parity_of_the_inputs(name, encoding):
    n = 8
    task = tasks.build(name, n_dims=n, n_points=40, encoding=encoding)
    b = task.sample(16, seed=4)
    bits, ys, subsets = bits_of(task, b["xs"]), b["ys"].long().tolist(), b["subset"].tolist()
    assert len({tuple(y) for y in ys}) > 1
    for i in range(16):
        assert 0 < sum(ys[i]) < 40, "labels must depend on the inputs"
        rows = [sum(bit << j for j, bit in enumerate(x)) for x in bits[i]]
        s, rank = solve_gf2(rows, ys[i], n)
        assert s is not None, "labels are not a parity of any subset of the inputs"
        for row, y in zip(rows, ys[i]):
            assert bin(row & s).count("1") % 2 == y
        if rank == n:
            assert s == sum(1 << j for j, on in enumerate(subsets[i]) if on)
        if name == "sparse_parity":
            assert sum(subsets[i]) == task.sparsity
        assert any(subsets[i])


def test_gf2_solver_rejects_non_parity_labels():
    rows = [0b01, 0b10, 0b11, 0b00]
    assert solve_gf2(rows, [1, 1, 0, 0], 2)[0] == 0b11
    assert solve_gf2(rows, [1, 1, 1, 0], 2)[0] is None


@pytest.mark.parametrize("name", BOOLEAN)
def test_labels_are_balanced(name):
    task = tasks.build(name)
    ys = task.sample(128, seed=6)["ys"]
    assert abs(float(ys.mean()) - 0.5) < 0.05
    mixed = ((ys.sum(1) > 0) & (ys.sum(1) < task.n_points)).float().mean()
    assert float(mixed) > 0.9


@pytest.mark.parametrize("name,key", [("conjunction", "literals"), ("dnf3", "terms")])
def test_inputs_are_uniform_given_the_label(name, key):
    """Bits that no literal fixes stay uniform; a conjunction's positives satisfy every literal."""
    task = tasks.build(name, n_dims=12, n_points=70)
    b = task.sample(256, seed=0)
    formula = b[key] if key == "terms" else b[key][:, None]
    free = (formula == 0).all(dim=1)[:, None, :].expand_as(b["xs"])
    assert abs(float(b["xs"][free].mean()) - 0.5) < 0.02
    if name == "conjunction":
        pos = b["ys"] == 1
        lit = b[key][:, None, :].expand_as(b["xs"])[pos]
        x = b["xs"][pos]
        assert bool(((lit == 0) | ((lit == 1) & (x == 1)) | ((lit == -1) & (x == 0))).all())


BAD_PARAMS = [
    ("conjunction", "n_dims", 0), ("conjunction", "n_points", 0), ("conjunction", "p_literal", 0.0),
    ("conjunction", "p_literal", 1.5), ("conjunction", "encoding", "binary"), ("disjunction", "p_literal", -0.1),
    ("dnf3", "n_dims", 1), ("cnf3", "p_literal", 2.0), ("parity", "n_dims", 0), ("parity", "encoding", 1),
    ("sparse_parity", "sparsity", 0), ("sparse_parity", "sparsity", 11), ("majority", "p_subset", 0.0),
    ("majority", "p_subset", 1.5),
]


@pytest.mark.parametrize("name,param,value", BAD_PARAMS)
def test_bad_parameter_is_named(name, param, value):
    with pytest.raises(ValueError, match=param):
        tasks.build(name, **{param: value})


def test_majority_without_odd_subsets_is_refused():
    with pytest.raises(ValueError, match="p_subset"):
        tasks.build("majority", n_dims=4, p_subset=1.0)
    assert tasks.build("majority", n_dims=5, p_subset=1.0).sample(2)["subset"].all()


class ConstantLogit(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, xs, ys):
        return torch.full_like(ys, self.value)


def test_bce_objective():
    task = tasks.build("conjunction", n_dims=6, n_points=10)
    batch = task.sample(32, seed=0)
    loss, stats = objective_fn("bce")(ConstantLogit(2.0), batch, task, train=False)
    ys = batch["ys"]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.full_like(ys, 2.0), ys)
    assert abs(float(loss) - float(expected)) < 1e-6
    s, c = stats["accuracy"]
    assert abs(float(s / c) - float(ys.mean())) < 1e-6 and float(c) == 320
    s, c = stats["accuracy_by_k"]
    assert s.shape == (10,) and c.tolist() == [32.0] * 10
    torch.testing.assert_close(s / c, ys.mean(0))


def test_short_training_run(tmp_path):
    results = run_train(
        tmp_path / "run", "task=conjunction", "task.n_dims=6", "task.n_points=10",
        "model.d_model=32", "model.n_layers=1", "data.batch_size=8", "data.val_size=32",
        "data.test_size=32", "trainer.max_steps=12", "trainer.val_check_interval=6")
    test = results["test"]
    assert results["task"] == "conjunction" and results["steps"] == 12
    assert 0.0 <= test["accuracy"] <= 1.0 and len(test["accuracy_by_k"]) == 10
    assert test["scored"] == 32 * 10
    assert results["selection_metric"] == "accuracy"
