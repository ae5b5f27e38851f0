"""Reference learners for in-context regression, run on the same prompts as the model.

Every baseline maps ``xs`` (n, points, dims) and ``ys`` (n, points) to predictions (n, points)
where prediction ``k`` uses only the ``k`` examples before it, ``(xs[:, :k], ys[:, :k])``, to
predict ``ys[:, k]`` at ``xs[:, k]`` (with no example, every baseline predicts 0). These are the
estimators Garg et al. (2022) compare against:

- ``least_squares``: the minimum-norm least-squares fit (the pseudo-inverse; for ``k < dims``
  the interpolating solution of smallest norm),
- ``nearest_neighbours``: the mean label of the 3 nearest earlier inputs (Euclidean; fewer when
  fewer exist),
- ``averaging``: ``w = mean_i y_i x_i``, an unbiased estimate of ``w`` when the inputs are
  isotropic with unit variance,
- ``lasso``: ``argmin_w ||y - X w||^2 / (2k) + alpha ||w||_1`` without intercept, solved
  exactly along the regularisation path (LARS-lasso) for all prefixes at once.

All computations run in float64 and return the dtype of ``ys``.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

BASELINES: Dict[str, Callable] = {}


def baseline(name: str):
    def deco(fn):
        BASELINES[name] = fn
        return fn

    return deco


def _prefix_sums(v: torch.Tensor) -> torch.Tensor:
    """Exclusive cumulative sums over dim 1: out[:, k] = sum of v[:, :k]."""
    return torch.cat([torch.zeros_like(v[:, :1]), v.cumsum(dim=1)[:, :-1]], dim=1)


@baseline("least_squares")
def least_squares(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    x, y = xs.double(), ys.double()
    n, P, _ = x.shape
    preds = torch.zeros(n, P, dtype=torch.float64, device=x.device)
    for k in range(1, P):
        w = torch.linalg.pinv(x[:, :k]) @ y[:, :k, None]
        preds[:, k] = (x[:, k] * w[..., 0]).sum(-1)
    return preds.to(ys.dtype)


@baseline("nearest_neighbours")
def nearest_neighbours(xs: torch.Tensor, ys: torch.Tensor, k: int = 3) -> torch.Tensor:
    x, y = xs.double(), ys.double()
    n, P, _ = x.shape
    dist = torch.cdist(x, x)
    earlier = torch.ones(P, P, dtype=torch.bool, device=x.device).tril(-1)
    dist = dist.masked_fill(~earlier, float("inf"))
    k = min(k, P)
    d, idx = dist.topk(k, dim=-1, largest=False)
    valid = torch.isfinite(d)
    labels = y[:, None, :].expand(n, P, P).gather(2, idx)
    total = (labels * valid).sum(-1)
    count = valid.sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)).to(ys.dtype)


@baseline("averaging")
def averaging(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    x, y = xs.double(), ys.double()
    P = x.shape[1]
    k = torch.arange(P, dtype=torch.float64, device=x.device)
    w = _prefix_sums(x * y[..., None]) / k.clamp(min=1)[None, :, None]
    return (x * w).sum(-1).to(ys.dtype)


@baseline("lasso")
def lasso(xs: torch.Tensor, ys: torch.Tensor, alpha: float = 0.1, chunk: int = 256) -> torch.Tensor:
    preds = torch.zeros(ys.shape, dtype=torch.float64, device=ys.device)
    for s in range(0, xs.shape[0], chunk):
        x, y = xs[s:s + chunk].double(), ys[s:s + chunk].double()
        w = lasso_prefix_weights(x, y, alpha)
        preds[s:s + chunk] = (x * w).sum(-1)
    return preds.to(ys.dtype)


def lasso_prefix_weights(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Lasso weights (n, points, dims) fitted on every prefix: row ``k`` uses the first ``k`` examples.

    Exact, by the homotopy (LARS-lasso) method on the Gram form ``G = X^T X / k``,
    ``c = X^T y / k``: start from ``w = 0`` at ``lambda = max |c|`` and follow the piecewise
    linear solution path as ``lambda`` decreases, adding a variable when its correlation
    ``|c - G w|`` reaches ``lambda`` and removing one when its weight crosses 0, until
    ``lambda = alpha``. All prefixes of all prompts move along their paths together.
    """
    n, P, D = x.shape
    k = torch.arange(P, dtype=x.dtype, device=x.device).clamp(min=1)[None, :, None]
    G = (_prefix_sums(x[..., :, None] * x[..., None, :]) / k[..., None]).reshape(-1, D, D)
    rho = (_prefix_sums(x * y[..., None]) / k).reshape(-1, D)
    w = torch.zeros_like(rho)
    lam, first = rho.abs().max(dim=-1)
    active = torch.zeros_like(rho, dtype=torch.bool)
    sign = torch.zeros_like(rho)
    todo = (lam > alpha).nonzero().squeeze(1)
    active[todo, first[todo]] = True
    sign[todo, first[todo]] = rho[todo, first[todo]].sign()
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    eps = 1e-12
    for _ in range(20 * D + 20):
        if todo.numel() == 0:
            return w.reshape(n, P, D)
        g, a_set, s, wi, r, lm = G[todo], active[todo], sign[todo], w[todo], rho[todo], lam[todo]
        both = a_set[:, :, None] & a_set[:, None, :]
        system = torch.where(both, g, eye * (~a_set)[:, :, None])
        u = torch.linalg.solve(system, s[..., None])[..., 0]
        a = (g @ u[..., None])[..., 0]
        inf = torch.full_like(r, float("inf"))
        up = torch.where(~a_set & (1 - a > eps), (lm[:, None] - r) / (1 - a), inf)
        down = torch.where(~a_set & (1 + a > eps), (lm[:, None] + r) / (1 + a), inf)
        join_gamma, join_j = torch.minimum(up, down).clamp(min=0).min(dim=-1)
        crossing = -wi / u
        drop_gamma, drop_j = torch.where(a_set & (crossing > eps), crossing, inf).min(dim=-1)
        target = lm - alpha
        gamma = torch.minimum(torch.minimum(join_gamma, drop_gamma), target)
        wi = wi + gamma[:, None] * u
        r = r - gamma[:, None] * a
        lm = lm - gamma
        done = target <= torch.minimum(join_gamma, drop_gamma)
        joins = ~done & (join_gamma <= drop_gamma)
        drops = ~done & ~joins
        rows = torch.arange(todo.numel(), device=x.device)
        a_set[rows[joins], join_j[joins]] = True
        s[rows[joins], join_j[joins]] = r[rows[joins], join_j[joins]].sign()
        a_set[rows[drops], drop_j[drops]] = False
        s[rows[drops], drop_j[drops]] = 0
        wi[rows[drops], drop_j[drops]] = 0
        w[todo], rho[todo], lam[todo], active[todo], sign[todo] = wi, r, lm, a_set, s
        todo = todo[~done]
    raise RuntimeError(f"the lasso path did not reach alpha={alpha} in {20 * D + 20} steps")


def predict(name: str, xs: torch.Tensor, ys: torch.Tensor, **kwargs) -> torch.Tensor:
    return BASELINES[name](xs, ys, **kwargs)
