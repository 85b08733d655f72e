"""ADMM on a layer's l0-constrained least squares, the support of ``"ecp-admm"``.

References: X. Meng, K. Behdin, H. Wang, R. Mazumder, "ALPS: Improved optimization for highly
sparse one-shot pruning for large language models", NeurIPS 2024; V. Boza, "Fast and
effective weight update for pruned large language models", TMLR 2024
(github.com/fmfi-compbio/admm-pruning).

Every row ``i`` of a layer solves, on the layer's inputs ``X = [a, 1]`` in the network whose
upstream layers are already pruned and refit and toward the dense pre-activations ``u_i``,

    min_w ||X w - u_i||^2   s.t.  w keeps ``n_i - r_i`` of the row's candidate weights,

the bias free. Splitting ``w = z`` with ``z`` in the constraint set and scaled duals ``v``,
ADMM alternates (``H = X^T X / N``, ``c_i = X^T u_i / N``)

    z <- P(w + v),    v <- v + w - z,    w <- (H + rho D)^-1 (c_i + rho D (z - v)),

where ``D = diag(sigma_j^2, ..., 0)`` holds the inputs' variances (the bias's entry 0: it is not
split, so it is fitted exactly in every ``w`` step). In the coordinates ``sigma_j w_j`` the
penalty is ``rho ||.||^2`` and the projection ``P`` keeps the largest ``(w + v)_j^2 f_ij``: with
``f_ij = sigma_j^2``, the Euclidean projection there, and ECP's score ``W_ij^2 Var(a_j)`` as it
is for a linear downstream (``s_i`` constant); :func:`admm_supports` takes any ``f``. All rows
share ``H + rho D``: one Cholesky factorisation per layer, the ``w`` step of every row one
triangular solve with ``n_out`` right-hand sides.

Schedule (Boza's): the removals grow cubically, ``r_i(t) = round(r_i (1 - (1 - (t+1)/T_g)^3))``
over the first ``T_g = round(GROWTH * iterations)`` iterations (``GROWTH = 0.75``: his 15 of
20), then stay at ``r_i``; the support is the last projection's. ``rho`` is relative to the
inputs' variances (the method's default 0.3; Boza uses 1 on unit-normalised inputs) and fixed,
which keeps the one factorisation. ``w``
starts at the layer's rows before pruning and ``v`` at 0. The caller then refits every row
exactly on its support (least squares, :mod:`ecprune.reconstruct.support`), as ALPS's final
step does with preconditioned CG.
"""

from __future__ import annotations

import torch

from ..masking.order import removal_order

# Share of the iterations over which the removals grow to their target (Boza: 15 of 20).
GROWTH = 0.75
# Variances below this fraction of their mean are raised to it in D, so that H + rho D is
# positive definite when an input is constant (collinear with the bias's ones column).
VARIANCE_FLOOR = 1e-2


def removal_schedule(removals: torch.Tensor, iterations: int) -> list[torch.Tensor]:
    """Removals per row at each iteration: cubic growth to ``removals`` over the first
    ``round(GROWTH * iterations)`` iterations (at least one), then ``removals``.

    >>> [r.tolist() for r in removal_schedule(torch.tensor([8]), 4)]
    [[6], [8], [8], [8]]
    """
    growth = max(1, round(GROWTH * iterations))
    steps = []
    for t in range(iterations):
        share = 1 - (1 - min(1.0, (t + 1) / growth)) ** 3
        steps.append(torch.round(removals.to(torch.float64) * share).to(removals.dtype))
    return steps


def input_variances(hessian: torch.Tensor) -> torch.Tensor:
    """``Var(a_j)`` of the weight columns of ``H = E[x x^T]`` (the ones column last),
    raised to :data:`VARIANCE_FLOOR` of their mean; all ones when every input is constant up
    to the rounding of ``E[x^2] - E[x]^2`` (e.g. a layer whose inputs lost all their weights)."""
    mean, second = hessian[-1, :-1], hessian.diagonal()[:-1]
    variance = (second - mean.square()).clamp_min(0)
    scale = variance.mean()
    rounding = len(second) * torch.finfo(hessian.dtype).eps * second.abs().max()
    if not scale > rounding:
        return torch.ones_like(variance)
    return variance.clamp_min(VARIANCE_FLOOR * scale)


def project(point: torch.Tensor, factors: torch.Tensor, candidates: torch.Tensor,
            removals: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Keep mask (n_out, m) of the projection: in each row, every candidate but the ``r_i``
    with the lowest ``point^2 * factors`` (ties by position, as every selection). With
    ``groups`` (m,), the group of each column (N:M patterns), ``removals`` is (n_out, groups)
    and the count holds in every group of every row."""
    if groups is None:
        groups, removals = torch.zeros_like(candidates[0], dtype=torch.long), removals[:, None]
    order = removal_order(point.square() * factors, candidates, dim=1)
    order = order.gather(1, torch.argsort(groups[order], dim=1, stable=True))  # group-major
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    sizes = torch.bincount(groups, minlength=removals.shape[1])
    first = (torch.cumsum(sizes, 0) - sizes)[groups]  # where each column's group starts
    absent = torch.zeros_like(removals).index_add_(1, groups, (~candidates).to(removals.dtype))
    return rank - first >= (absent + removals)[:, groups]


def admm_supports(gram: torch.Tensor, cross: torch.Tensor, start: torch.Tensor,
                  candidates: torch.Tensor, removals: torch.Tensor, *, rho: float,
                  iterations: int, factors: torch.Tensor | None = None,
                  groups: torch.Tensor | None = None) -> torch.Tensor:
    """The support ADMM finds for every row of a layer (keep mask, (n_out, m)).

    ``gram`` (m + 1, m + 1): ``sum x x^T`` over the layer's columns, the ones column last;
    ``cross`` (m + 1, n_out): ``sum x u^T``; ``start`` (n_out, m + 1): the rows ``[W, b]`` it
    starts from; ``candidates`` (n_out, m): the weights a row may keep; ``removals`` (n_out,):
    how many candidates each row drops; ``factors`` (n_out, m): the projection's ``f``
    (default: the inputs' variances); ``groups`` (m,): each column's N:M group, ``removals``
    then (n_out, groups) per group (:func:`project`). See the module docstring.
    """
    count = gram[-1, -1]
    hessian, target = gram / count, cross / count
    variances = input_variances(hessian)
    factors = variances[None, :].expand_as(candidates) if factors is None else factors
    metric = torch.cat([variances, variances.new_zeros(1)])[:, None]  # diag of D, (m + 1, 1)
    factor = torch.linalg.cholesky(hessian + rho * torch.diag(metric[:, 0]))
    w, v = start.T.clone(), torch.zeros_like(start.T)  # (m + 1, n_out)
    keep = candidates
    for removed in removal_schedule(removals, iterations):
        point = w + v
        keep = project(point[:-1].T, factors, candidates, removed, groups)
        z = point.clone()
        z[:-1] *= keep.T
        v = point - z
        w = torch.cholesky_solve(target + rho * metric * (z - v), factor)
    return keep
