"""Regression tasks, their curriculum and baselines, each checked against an independent re-derivation."""

import math

import numpy as np
import pytest
import torch
from train_run import run_train

import seqicl.tasks as tasks
from seqicl.errors import ConfigError
from seqicl.evaluation import baselines
from seqicl.seeding import derive_seed
from seqicl.tasks.curriculum import Curriculum
from seqicl.tasks.datamodule import TaskDataModule, TrainBatches
from seqicl.training.objectives import objective_fn

REGRESSION = ["linear_regression", "noisy_linear_regression", "sparse_linear_regression",
              "quadratic_regression", "relu2nn_regression", "decision_tree_regression"]
SMALL = {"n_dims": 4, "n_points": 9}
CURRICULUM = {"dims": {"start": 2, "inc": 1, "interval": 3}, "points": {"start": 3, "inc": 2, "interval": 2}}


def np_batch(batch):
    return {k: v.numpy().astype(np.float64) if v.is_floating_point() else v.numpy() for k, v in batch.items()}


def test_all_registered_and_continuous():
    for name in REGRESSION:
        task = tasks.build(name)
        assert name in tasks.available()
        assert task.kind == "continuous" and task.objective == "mse" and not task.finite_support
        assert task.backbone == "continuous" and task.seq_len == 2 * task.n_points
        assert (task.selection_metric, task.selection_mode) == ("mse", "min")


@pytest.mark.parametrize("name", REGRESSION)
def test_shapes_and_determinism(name):
    task = tasks.build(name, **SMALL)
    a, b = task.sample(5, seed=3), task.sample(5, seed=3)
    assert a["xs"].shape == (5, 9, 4) and a["xs"].dtype == torch.float32
    assert a["ys"].shape == (5, 9) and a["ys"].dtype == torch.float32
    assert a["mask"].shape == (5, 9) and bool(a["mask"].all())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = task.sample(5, seed=4)
    assert not torch.equal(a["xs"], c["xs"])


def test_linear_labels_are_exactly_linear():
    task = tasks.build("linear_regression", n_dims=5, n_points=12)
    b = np_batch(task.sample(16, seed=0))
    for x, y, w in zip(b["xs"], b["ys"], b["w"]):
        w_hat, *_ = np.linalg.lstsq(x, y, rcond=None)
        assert np.abs(x @ w_hat - y).max() < 1e-4 * (1 + np.abs(y).max())
        np.testing.assert_allclose(w_hat, w, atol=1e-4)


def test_noisy_linear_noise_has_the_asked_std():
    task = tasks.build("noisy_linear_regression", n_dims=5, n_points=12, noise_std=0.5)
    b = np_batch(task.sample(500, seed=1))
    noise = b["ys"] - np.einsum("npd,nd->np", b["xs"], b["w"])
    assert abs(noise.std() - 0.5) < 0.02 and abs(noise.mean()) < 0.02
    x, y = b["xs"][0], b["ys"][0]
    w_hat, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert np.abs(x @ w_hat - y).max() > 1e-2


def test_sparse_w_has_exactly_sparsity_nonzeros():
    task = tasks.build("sparse_linear_regression", n_dims=10, n_points=12, sparsity=3)
    b = np_batch(task.sample(64, seed=2))
    assert ((b["w"] != 0).sum(1) == 3).all()
    np.testing.assert_allclose(b["ys"], np.einsum("npd,nd->np", b["xs"], b["w"]), atol=1e-4)
    assert len({tuple(np.flatnonzero(w)) for w in b["w"]}) > 10


def test_quadratic_recomputed():
    task = tasks.build("quadratic_regression", **SMALL)
    b = np_batch(task.sample(8, seed=0))
    expected = np.einsum("npd,nd->np", b["xs"] ** 2, b["w"]) / math.sqrt(3)
    np.testing.assert_allclose(b["ys"], expected, atol=1e-4)


def test_relu2nn_recomputed():
    task = tasks.build("relu2nn_regression", n_dims=4, n_points=9, hidden_size=7)
    b = np_batch(task.sample(8, seed=0))
    assert b["w1"].shape == (8, 7, 4) and b["w2"].shape == (8, 7)
    hidden = np.maximum(np.einsum("npd,nhd->nph", b["xs"], b["w1"]), 0)
    expected = math.sqrt(2 / 7) * np.einsum("nph,nh->np", hidden, b["w2"])
    np.testing.assert_allclose(b["ys"], expected, atol=1e-4)


def test_decision_tree_walked_in_python():
    depth = 3
    task = tasks.build("decision_tree_regression", n_dims=4, n_points=9, depth=depth)
    b = task.sample(6, seed=0)
    xs, ys = b["xs"].tolist(), b["ys"].tolist()
    feats, leaves = b["tree_features"].tolist(), b["tree_leaves"].tolist()
    assert len(feats[0]) == 2 ** depth - 1 and len(leaves[0]) == 2 ** depth
    for i in range(6):
        for p in range(9):
            node = 0
            for _ in range(depth):
                node = 2 * node + (2 if xs[i][p][feats[i][node]] > 0 else 1)
            assert ys[i][p] == leaves[i][node - (2 ** depth - 1)]


@pytest.mark.parametrize("name", REGRESSION)
def test_labels_have_second_moment_n_dims(name):
    task = tasks.build(name, n_dims=6, n_points=10)
    ys = task.sample(4000, seed=5)["ys"].double()
    expected = 6 + (1.0 if name == "noisy_linear_regression" else 0.0)
    assert abs(float((ys ** 2).mean()) / expected - 1) < 0.1


BAD_PARAMS = [
    ("linear_regression", "n_dims", 0), ("linear_regression", "n_points", 0),
    ("linear_regression", "n_dims", 2.5), ("linear_regression", "lasso_alpha", 0.0),
    ("linear_regression", "baselines", ["ridge"]), ("linear_regression", "baselines", "least_squares"),
    ("noisy_linear_regression", "noise_std", -1.0),
    ("sparse_linear_regression", "sparsity", 0), ("sparse_linear_regression", "sparsity", 21),
    ("relu2nn_regression", "hidden_size", 0),
    ("decision_tree_regression", "depth", 0), ("decision_tree_regression", "depth", 40),
]


@pytest.mark.parametrize("name,param,value", BAD_PARAMS)
def test_bad_parameter_is_named(name, param, value):
    with pytest.raises(ValueError, match=param):
        tasks.build(name, **{param: value})


@pytest.mark.parametrize("curriculum,named", [
    ({"dims": {"start": 0, "inc": 1, "interval": 5}}, "curriculum.dims.start"),
    ({"dims": {"start": 30, "inc": 1, "interval": 5}}, "curriculum.dims.start"),
    ({"points": {"start": 3, "inc": 0, "interval": 5}}, "curriculum.points.inc"),
    ({"points": {"start": 3, "inc": 2, "interval": 0}}, "curriculum.points.interval"),
    ({"points": {"start": 3, "inc": 2}}, "curriculum.points.interval"),
    ({"points": {"start": 3, "inc": 2, "interval": 5, "end": 9}}, "curriculum.points"),
    ({"width": {"start": 3, "inc": 2, "interval": 5}}, "curriculum"),
    ("slow", "curriculum"),
])
def test_bad_curriculum_is_named(curriculum, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        tasks.build("linear_regression", curriculum=curriculum)


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="sparsity"):
        tasks.build("linear_regression", sparsity=3)


# ---------------------------------------------------------------------------------------------
# curriculum


def test_curriculum_sizes_at_steps():
    c = Curriculum({"dims": {"start": 5, "inc": 1, "interval": 2000},
                    "points": {"start": 11, "inc": 2, "interval": 2000}}, n_dims=20, n_points=41)
    assert c.at(0) == (5, 11) and c.at(1999) == (5, 11) and c.at(2000) == (6, 13)
    assert c.at(9 * 2000 + 5) == (14, 29)
    assert c.at(15 * 2000) == (20, 41) and c.at(10 ** 7) == (20, 41)
    assert c.full_size_step() == 30000
    only_points = Curriculum({"points": {"start": 3, "inc": 4, "interval": 10}}, n_dims=8, n_points=9)
    assert only_points.at(0) == (8, 3) and only_points.at(15) == (8, 7) and only_points.at(25) == (8, 9)


@pytest.mark.parametrize("name", REGRESSION)
def test_curriculum_batches_have_the_scheduled_size(name):
    task = tasks.build(name, n_dims=6, n_points=9, curriculum=CURRICULUM)
    for step in (0, 4, 7, 100):
        d, p = task.curriculum.at(step)
        b = task.sample(8, seed=1, step=step)
        assert b["xs"].shape == (8, 9, 6) and b["ys"].shape == (8, 9)
        active = b["xs"].abs().sum(dim=(0, 1)) > 0
        assert active.tolist() == [True] * d + [False] * (6 - d)
        assert (b["mask"].sum(1) == p).all() and bool(b["mask"][:, :p].all())
        assert not bool(b["xs"][:, p:].any()) and not bool(b["ys"][:, p:].any())
        assert bool((b["ys"][:, :p] != 0).any())
        for key in ("w", "w1"):
            if key in b:
                assert not bool(b[key][..., d:].any())
        if "tree_features" in b:
            assert int(b["tree_features"].max()) < d
        again = task.sample(8, seed=1, step=step)
        assert all(torch.equal(b[k], again[k]) for k in b)
    full = task.sample(8, seed=1)
    assert bool(full["mask"].all()) and bool((full["xs"].abs().sum(dim=(0, 1)) > 0).all())


def test_sparse_curriculum_keeps_support_in_active_dims():
    task = tasks.build("sparse_linear_regression", n_dims=10, n_points=9, sparsity=3,
                       curriculum={"dims": {"start": 2, "inc": 1, "interval": 5}})
    w = task.sample(32, seed=0, step=0)["w"]
    assert ((w != 0).sum(1) == 2).all() and not bool(w[:, 2:].any())
    w = task.sample(32, seed=0, step=5)["w"]
    assert ((w != 0).sum(1) == 3).all() and not bool(w[:, 3:].any())


def _epochs(stream, n_epochs):
    out = []
    for _ in range(n_epochs):
        out.extend(stream)
    return out


def test_train_stream_follows_the_curriculum_and_resumes():
    task = tasks.build("linear_regression", n_dims=6, n_points=9, curriculum=CURRICULUM)
    stream = TrainBatches(task, batch_size=4, seed=7, steps_per_epoch=3)
    batches = _epochs(stream, 4)
    assert len(batches) == 12
    for step, b in enumerate(batches):
        d, p = task.curriculum.at(step)
        assert int(b["mask"][0].sum()) == p
        assert int((b["xs"].abs().sum(dim=(0, 1)) > 0).sum()) == d

    resumed = TrainBatches(task, batch_size=4, seed=7, steps_per_epoch=3)
    partial = iter(resumed)
    for _ in range(2):
        next(partial)
    state = resumed.state_dict()
    fresh = TrainBatches(task, batch_size=4, seed=7, steps_per_epoch=3)
    fresh.load_state_dict(state)
    rest = list(fresh) + _epochs(fresh, 3)
    assert len(rest) == 10
    for a, b in zip(batches[2:], rest):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_token_task_stream_is_unchanged():
    task = tasks.build("mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
    stream = TrainBatches(task, batch_size=4, seed=3, steps_per_epoch=2)
    first = next(iter(stream))
    direct = task.sample(4, seed=derive_seed(3, "stream", 0, 0))
    assert torch.equal(first["inputs"], direct["inputs"])


def test_fixed_training_set_with_curriculum_is_refused():
    task = tasks.build("linear_regression", curriculum=CURRICULUM, n_dims=6, n_points=9)
    with pytest.raises(ConfigError, match="train_size"):
        TaskDataModule(task, batch_size=4, train_size=64)


def test_datamodule_adds_baselines_to_evaluation_splits():
    task = tasks.build("linear_regression", n_dims=3, n_points=7)
    dm = TaskDataModule(task, batch_size=4, val_size=8, test_size=8, on_device=False)
    dm.setup()
    for split in ("val", "test"):
        for name in task.baselines:
            pred = dm.splits[split][f"baseline_{name}"]
            expected = baselines.predict(name, dm.splits[split]["xs"], dm.splits[split]["ys"])
            assert torch.equal(pred, expected)
    assert "baseline_least_squares" not in dm.splits.get("train", {})
    assert not torch.equal(dm.splits["val"]["xs"], dm.splits["test"]["xs"])


# ---------------------------------------------------------------------------------------------
# baselines against direct numpy solutions


def _data(n=3, P=7, D=4, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, P, D, generator=g, dtype=torch.float64)
    w = torch.randn(n, D, generator=g, dtype=torch.float64)
    ys = (xs @ w[:, :, None])[..., 0] + noise * torch.randn(n, P, generator=g, dtype=torch.float64)
    return xs, ys


def test_least_squares_matches_numpy_min_norm():
    xs, ys = _data()
    pred = baselines.least_squares(xs, ys).numpy()
    x, y = xs.numpy(), ys.numpy()
    for i in range(x.shape[0]):
        assert pred[i, 0] == 0
        for k in range(1, x.shape[1]):
            w, *_ = np.linalg.lstsq(x[i, :k], y[i, :k], rcond=None)
            assert abs(pred[i, k] - x[i, k] @ w) < 1e-8


def test_least_squares_error_curve():
    d = 6
    xs, ys = _data(n=3000, P=10, D=d, noise=0.0, seed=1)
    err = ((baselines.least_squares(xs, ys) - ys) ** 2).mean(0) / d
    for k in range(1, d):
        assert abs(float(err[k]) - (d - k) / d) < 0.12 * (d - k) / d + 0.02
    assert float(err[d:].max()) < 1e-8


def test_nearest_neighbours_matches_brute_force():
    xs, ys = _data(P=9)
    pred = baselines.nearest_neighbours(xs, ys, k=3).numpy()
    x, y = xs.numpy(), ys.numpy()
    for i in range(x.shape[0]):
        assert pred[i, 0] == 0
        for k in range(1, x.shape[1]):
            dist = np.linalg.norm(x[i, :k] - x[i, k], axis=1)
            near = np.argsort(dist)[:3]
            assert abs(pred[i, k] - y[i, near].mean()) < 1e-10


def test_averaging_matches_numpy():
    xs, ys = _data()
    pred = baselines.averaging(xs, ys).numpy()
    x, y = xs.numpy(), ys.numpy()
    for i in range(x.shape[0]):
        assert pred[i, 0] == 0
        for k in range(1, x.shape[1]):
            w = (y[i, :k, None] * x[i, :k]).mean(0)
            assert abs(pred[i, k] - x[i, k] @ w) < 1e-10


def _lasso_coordinate_descent(X, y, alpha, sweeps=5000):
    k, d = X.shape
    w = np.zeros(d)
    for _ in range(sweeps):
        previous = w.copy()
        for j in range(d):
            r = y - X @ w + X[:, j] * w[j]
            rho, z = X[:, j] @ r / k, X[:, j] @ X[:, j] / k
            w[j] = np.sign(rho) * max(abs(rho) - alpha, 0.0) / z
        if np.abs(w - previous).max() < 1e-14:
            break
    return w


def test_lasso_matches_coordinate_descent_and_kkt():
    alpha = 0.2
    xs, ys = _data(n=2, P=9, D=4, noise=0.3, seed=3)
    W = baselines.lasso_prefix_weights(xs, ys, alpha).numpy()
    pred = baselines.lasso(xs, ys, alpha=alpha).numpy()
    x, y = xs.numpy(), ys.numpy()
    for i in range(2):
        assert pred[i, 0] == 0
        for k in range(1, 9):
            ref = _lasso_coordinate_descent(x[i, :k], y[i, :k], alpha)
            np.testing.assert_allclose(W[i, k], ref, atol=1e-6)
            assert abs(pred[i, k] - x[i, k] @ ref) < 1e-5
            grad = x[i, :k].T @ (y[i, :k] - x[i, :k] @ W[i, k]) / k
            on = W[i, k] != 0
            np.testing.assert_allclose(grad[on], alpha * np.sign(W[i, k][on]), atol=1e-6)
            assert (np.abs(grad[~on]) <= alpha + 1e-6).all()


def test_lasso_recovers_sparse_w():
    task = tasks.build("sparse_linear_regression", n_dims=10, n_points=30, sparsity=2)
    b = task.sample(16, seed=0)
    W = baselines.lasso_prefix_weights(b["xs"].double(), b["ys"].double(), alpha=0.01)
    assert float((W[:, -1] - b["w"].double()).abs().max()) < 0.1


# ---------------------------------------------------------------------------------------------
# the mse objective and the evaluation statistics


class ZeroModel(torch.nn.Module):
    def forward(self, xs, ys):
        return torch.zeros_like(ys)


def test_mse_objective_and_baseline_stats():
    task = tasks.build("sparse_linear_regression", n_dims=4, n_points=6, sparsity=2)
    batch = task.sample(64, seed=0)
    loss, stats = objective_fn("mse")(ZeroModel(), batch, task, train=False)
    ys = batch["ys"]
    assert abs(float(loss) - float((ys ** 2).mean())) < 1e-5
    s, c = stats["mse"]
    assert abs(float(s / c) - float((ys ** 2).mean()) / 4) < 1e-5
    s, c = stats["mse_by_k"]
    assert s.shape == (6,) and c.tolist() == [64.0] * 6
    torch.testing.assert_close(s / c, (ys ** 2).mean(0) / 4)
    for name in ("least_squares", "nearest_neighbours", "averaging", "lasso"):
        s, c = stats[f"baseline_{name}_by_k"]
        assert s.shape == (6,) and float(stats[f"baseline_{name}"][1]) == 64 * 6
    extras = task.eval_extras(batch)
    _, precomputed = objective_fn("mse")(ZeroModel(), {**batch, **extras}, task, train=False)
    for k in stats:
        torch.testing.assert_close(stats[k][0], precomputed[k][0])


def test_mse_loss_ignores_padded_points():
    task = tasks.build("linear_regression", n_dims=4, n_points=9, curriculum=CURRICULUM)
    batch = task.sample(16, seed=0, step=0)
    batch["ys"][~batch["mask"]] = 1000.0
    loss, stats = objective_fn("mse")(ZeroModel(), batch, task, train=True)
    m = batch["mask"]
    assert abs(float(loss) - float((batch["ys"][m] ** 2).mean())) < 1e-4
    assert float(stats["loss"][1]) == float(m.sum())


def test_short_training_run(tmp_path):
    results = run_train(
        tmp_path / "run", "task=linear_regression", "task.n_dims=4", "task.n_points=9",
        "task.curriculum.dims.start=2", "task.curriculum.dims.interval=5",
        "task.curriculum.points.start=5", "task.curriculum.points.interval=5",
        "model.d_model=32", "model.n_layers=1", "data.batch_size=8", "data.val_size=32",
        "data.test_size=32", "trainer.max_steps=12", "trainer.val_check_interval=6")
    test = results["test"]
    assert results["task"] == "linear_regression" and results["steps"] == 12
    assert math.isfinite(test["mse"]) and len(test["mse_by_k"]) == 9
    assert len(test["baseline_least_squares_by_k"]) == 9 and test["baseline_least_squares_by_k"][-1] < 1e-6
    assert results["selection_metric"] == "mse" and "mse" in results["val"]
    assert results["state_size"] is not None
