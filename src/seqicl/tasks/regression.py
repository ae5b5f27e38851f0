"""In-context regression (Garg et al. 2022, "What can transformers learn in-context?").

Each prompt draws its own function ``f`` and ``n_points`` inputs ``x ~ N(0, I_d)``; the labels
are ``y = f(x)``. The model sees ``x_1, y_1, ..., x_k`` and predicts ``y_k``.

Scaling: every function class is scaled so that ``E[y^2] = d`` (the number of active input
dimensions) over the draw of the function and the input, as for linear regression with
``w ~ N(0, I_d)``:

- ``linear_regression``: ``y = w . x``, ``w ~ N(0, I_d)``;
- ``noisy_linear_regression``: the same plus ``N(0, noise_std^2)`` label noise
  (``E[y^2] = d + noise_std^2``);
- ``sparse_linear_regression``: ``w`` has ``sparsity`` non-zero coordinates at uniformly random
  places, each ``N(0, d / sparsity)`` (Garg et al. leave them ``N(0, 1)``, so ``E[y^2] = sparsity``);
- ``quadratic_regression``: ``y = sum_i w_i x_i^2 / sqrt(3)``, ``w ~ N(0, I_d)``;
- ``relu2nn_regression``: ``y = sqrt(2 / r) sum_j a_j relu(v_j . x)`` with ``r = hidden_size``,
  ``v_j ~ N(0, I_d)``, ``a_j ~ N(0, 1)``;
- ``decision_tree_regression``: a full binary tree of depth ``depth``; each internal node tests
  ``x[feature] > 0`` on a uniformly random feature (go right when true) and each leaf holds a
  value ``N(0, d)`` (Garg et al.: ``N(0, 1)``, so ``E[y^2] = 1``).

Squared errors are reported divided by ``n_dims`` (``error_scale``), so predicting 0 scores 1
on every noiseless class at full size: ``mse`` overall and ``mse_by_k`` per number of
in-context examples ``k``. The baselines of :mod:`seqicl.evaluation.baselines` are run on the
same evaluation prompts and reported the same way (``baseline_least_squares``,
``baseline_least_squares_by_k``, ...).

Curriculum: with ``curriculum`` set (see :mod:`seqicl.tasks.curriculum`), training prompts at
step ``t`` use only the first ``d_t`` input dimensions (the others are 0 and the function is
drawn on the active ones) and the first ``p_t`` points. Batches keep the full shape: the
points after ``p_t`` are zero and ``mask`` excludes them from the loss. Because the models are
causal and the padding comes last, it never influences a scored prediction. Evaluation always
uses the full size.

Besides ``xs``, ``ys`` and ``mask`` a batch carries the function: ``w`` (linear, noisy, sparse,
quadratic), ``w1`` (n, hidden_size, n_dims) and ``w2`` (n, hidden_size) (ReLU network), or
``tree_features`` (n, 2^depth - 1) and ``tree_leaves`` (n, 2^depth) (decision tree, nodes in
heap order: the children of node ``i`` are ``2i+1`` (test false) and ``2i+2`` (test true)).
"""

from __future__ import annotations

import math

import torch

from seqicl.errors import ConfigError
from seqicl.evaluation.baselines import BASELINES, predict
from seqicl.evaluation.metrics import per_position_stats
from seqicl.seeding import generator
from seqicl.tasks.base import (ContinuousTask, check_float, check_int, check_n, parameters,
                               register)
from seqicl.tasks.curriculum import Curriculum

DEFAULT_BASELINES = ("least_squares", "nearest_neighbours", "averaging")


def check_baselines(value) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"baselines must be a list of names ({', '.join(sorted(BASELINES))}), got {value!r}")
    for name in value:
        if name not in BASELINES:
            raise ConfigError(f"baselines: unknown baseline {name!r}; choose from {', '.join(sorted(BASELINES))}")
    if len(set(value)) != len(value):
        raise ConfigError(f"baselines lists a name twice: {list(value)}")
    return list(value)


class RegressionTask(ContinuousTask):
    """Shared sampling, curriculum, metrics and baselines of the regression tasks."""

    objective = "mse"
    selection_metric = "mse"
    selection_mode = "min"

    def _init_common(self, n_dims, n_points, curriculum, baselines, lasso_alpha) -> None:
        self.n_dims = check_int("n_dims", n_dims, low=1)
        self.n_points = check_int("n_points", n_points, low=1)
        self.curriculum = None if curriculum is None else Curriculum(curriculum, self.n_dims, self.n_points)
        self.baselines = check_baselines(list(DEFAULT_BASELINES) if baselines is None else baselines)
        self.lasso_alpha = check_float("lasso_alpha", lasso_alpha, low=0.0, low_open=True)

    @property
    def error_scale(self) -> float:
        """Squared errors are reported divided by this: ``n_dims``, i.e. ``E[y^2]`` at full size."""
        return float(self.n_dims)

    def params(self) -> dict:
        out = {k: getattr(self, k) for k in parameters(self.name)}
        if self.curriculum is not None:
            out["curriculum"] = self.curriculum.as_config()
        return out

    def size_at(self, step: int | None) -> tuple[int, int]:
        """``(active dims, active points)`` of the prompts drawn at training step ``step``."""
        if step is None or self.curriculum is None:
            return self.n_dims, self.n_points
        return self.curriculum.at(step)

    def sample(self, n: int, seed: int = 0, device="cpu", step: int | None = None) -> dict:
        n = check_n(n)
        d, p = self.size_at(step)
        g = generator(seed, device)
        xs = torch.randn(n, self.n_points, self.n_dims, generator=g, device=device)
        xs[:, :, d:] = 0
        function = self.draw_function(n, d, g)
        ys = self.evaluate(xs, function, g)
        mask = (torch.arange(self.n_points, device=device) < p).expand(n, -1).clone()
        xs = xs * mask[..., None]
        ys = ys * mask
        return {"xs": xs, "ys": ys, "mask": mask, **function}

    def _normal(self, shape: tuple, d: int, g: torch.Generator) -> torch.Tensor:
        """N(0, 1) entries whose last axis is zero beyond the ``d`` active dimensions."""
        w = torch.randn(*shape, self.n_dims, generator=g, device=g.device)
        w[..., d:] = 0
        return w

    def draw_function(self, n: int, d: int, g: torch.Generator) -> dict:
        raise NotImplementedError

    def evaluate(self, xs: torch.Tensor, function: dict, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def baseline_predictions(self, name: str, batch: dict) -> torch.Tensor:
        kwargs = {"alpha": self.lasso_alpha} if name == "lasso" else {}
        return predict(name, batch["xs"], batch["ys"], **kwargs)

    def eval_extras(self, batch: dict) -> dict:
        return {f"baseline_{name}": self.baseline_predictions(name, batch) for name in self.baselines}

    def eval_stats(self, batch: dict, mask: torch.Tensor | None = None, **outputs) -> dict:
        """Normalised squared errors of every baseline, overall and per number of examples."""
        ys = batch["ys"]
        mask = batch["mask"] if mask is None else mask
        stats = {}
        for name in self.baselines:
            pred = batch.get(f"baseline_{name}")
            if pred is None:
                pred = self.baseline_predictions(name, batch)
            err = (pred.to(ys.dtype) - ys) ** 2 / self.error_scale
            stats.update(per_position_stats(f"baseline_{name}", err, mask))
        return stats


@register("linear_regression")
class LinearRegression(RegressionTask):
    def __init__(self, n_dims: int = 20, n_points: int = 41, curriculum: dict | None = None,
                 baselines: list | None = None, lasso_alpha: float = 0.1):
        self._init_common(n_dims, n_points, curriculum, baselines, lasso_alpha)

    def draw_function(self, n, d, g):
        return {"w": self._normal((n,), d, g)}

    def evaluate(self, xs, function, g):
        return (xs @ function["w"][:, :, None])[..., 0]


@register("noisy_linear_regression")
class NoisyLinearRegression(LinearRegression):
    def __init__(self, n_dims: int = 20, n_points: int = 41, noise_std: float = 1.0,
                 curriculum: dict | None = None, baselines: list | None = None, lasso_alpha: float = 0.1):
        self._init_common(n_dims, n_points, curriculum, baselines, lasso_alpha)
        self.noise_std = check_float("noise_std", noise_std, low=0.0)

    def evaluate(self, xs, function, g):
        clean = super().evaluate(xs, function, g)
        return clean + self.noise_std * torch.randn(clean.shape, generator=g, device=g.device)


@register("sparse_linear_regression")
class SparseLinearRegression(LinearRegression):
    def __init__(self, n_dims: int = 20, n_points: int = 41, sparsity: int = 3,
                 curriculum: dict | None = None, baselines: list | None = None, lasso_alpha: float = 0.1):
        self._init_common(n_dims, n_points, curriculum,
                          [*DEFAULT_BASELINES, "lasso"] if baselines is None else baselines, lasso_alpha)
        self.sparsity = check_int("sparsity", sparsity, low=1, high=self.n_dims)

    def draw_function(self, n, d, g):
        s = min(self.sparsity, d)
        support = torch.rand(n, d, generator=g, device=g.device).argsort(dim=1)[:, :s]
        values = torch.randn(n, s, generator=g, device=g.device) * math.sqrt(d / s)
        w = torch.zeros(n, self.n_dims, device=g.device)
        w.scatter_(1, support, values)
        return {"w": w}


@register("quadratic_regression")
class QuadraticRegression(RegressionTask):
    def __init__(self, n_dims: int = 20, n_points: int = 41, curriculum: dict | None = None,
                 baselines: list | None = None, lasso_alpha: float = 0.1):
        self._init_common(n_dims, n_points, curriculum, baselines, lasso_alpha)

    def draw_function(self, n, d, g):
        return {"w": self._normal((n,), d, g)}

    def evaluate(self, xs, function, g):
        return (xs ** 2 * function["w"][:, None]).sum(-1) / math.sqrt(3.0)


@register("relu2nn_regression")
class ReLU2NNRegression(RegressionTask):
    def __init__(self, n_dims: int = 20, n_points: int = 41, hidden_size: int = 100,
                 curriculum: dict | None = None, baselines: list | None = None, lasso_alpha: float = 0.1):
        self._init_common(n_dims, n_points, curriculum, baselines, lasso_alpha)
        self.hidden_size = check_int("hidden_size", hidden_size, low=1)

    def draw_function(self, n, d, g):
        w1 = self._normal((n, self.hidden_size), d, g)
        w2 = torch.randn(n, self.hidden_size, generator=g, device=g.device)
        return {"w1": w1, "w2": w2}

    def evaluate(self, xs, function, g):
        hidden = torch.relu(xs @ function["w1"].transpose(1, 2))
        return math.sqrt(2.0 / self.hidden_size) * (hidden * function["w2"][:, None]).sum(-1)


@register("decision_tree_regression")
class DecisionTreeRegression(RegressionTask):
    def __init__(self, n_dims: int = 20, n_points: int = 41, depth: int = 4,
                 curriculum: dict | None = None, baselines: list | None = None, lasso_alpha: float = 0.1):
        self._init_common(n_dims, n_points, curriculum, baselines, lasso_alpha)
        self.depth = check_int("depth", depth, low=1, high=16)

    def draw_function(self, n, d, g):
        internal = 2 ** self.depth - 1
        features = torch.randint(0, d, (n, internal), generator=g, device=g.device)
        leaves = torch.randn(n, internal + 1, generator=g, device=g.device) * math.sqrt(d)
        return {"tree_features": features, "tree_leaves": leaves}

    def evaluate(self, xs, function, g):
        features, leaves = function["tree_features"], function["tree_leaves"]
        n, P, _ = xs.shape
        node = torch.zeros(n, P, dtype=torch.long, device=xs.device)
        for _ in range(self.depth):
            feature = features.gather(1, node)
            goes_right = xs.gather(2, feature[..., None])[..., 0] > 0
            node = 2 * node + 1 + goes_right.long()
        return leaves.gather(1, node - (2 ** self.depth - 1))
