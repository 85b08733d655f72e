"""``"ecp-admm"``: ECP's per-layer and per-row counts, each row's support found by ADMM on the
layer-wise least-squares problem, then the exact refit on it (:mod:`ecprune.reconstruct.admm`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._validation import check_nonnegative, check_positive_int
from ..reconstruct.admm import admm_supports
from ..reconstruct.support import LayerProblem
from .base import UpdateStep
from .ecp import ECPRefit


@dataclass(frozen=True, kw_only=True)
class ECPADMM(ECPRefit):
    """ECP's scores set how many weights each layer loses (the refit allocation, as
    ``"ecp-refit"``) and how many each row loses (its lowest ECP scores); then, layer by layer
    from input to output on the pruned upstream network, ADMM chooses which
    (ALPS, Meng et al., NeurIPS 2024; Boza, TMLR 2024): ``min ||[A, 1][W, b]^T - U_dense||^2``
    with each row's weight count fixed, the bias free, one factorisation of ``H + rho D`` per
    layer for all rows, the removals growing cubically over the first 3/4 of ``iterations``
    (:mod:`ecprune.reconstruct.admm`). Every row is then refit exactly on its support, toward
    the same targets, with ``damping``'s ridge toward the ECP-compensated row
    (:mod:`ecprune.reconstruct.support`). ``refine="swaps"`` and ``objective="network"`` as
    for ``"ecp-refit"``; the fit is plain least squares (no ``refit_weighting``). With an N:M
    ``pattern`` the counts hold per group (ECP's per-group removals) and ADMM's projection
    keeps ``N`` of every group.

    ``iterations``: ADMM iterations per layer (default 40); ``rho``: the penalty, relative to
    the inputs' variances (default 0.3; Boza's 1.0 and 3.0 did worse on MNIST, see
    docs/beyond.md).
    """

    name = "ecp-admm"
    iterations: int = 40
    rho: float = 0.3
    OPTIONS: ClassVar[dict[str, str]] = {
        **{k: v for k, v in ECPRefit.OPTIONS.items() if k != "refit_weighting"},
        "admm_iterations": "iterations", "admm_rho": "rho"}

    def check(self, caller: str) -> None:
        super().check(caller)
        check_positive_int("admm_iterations", self.iterations, caller=caller)
        if check_nonnegative("admm_rho", self.rho, caller=caller) == 0:
            raise ValueError(f"The 'admm_rho' parameter of {caller} must be a finite float > 0. "
                             f"Got {self.rho!r} instead.")
        if self.weighting != "plain":
            raise ValueError(
                f"The 'refit_weighting' parameter of {caller} must be 'plain': ADMM solves the "
                f"plain least-squares problem. Got {self.weighting!r} instead.")

    def support(self, step: UpdateStep):
        newly, pattern = step.selection.newly_pruned, step.selection.pattern

        def choose(problem: LayerProblem) -> torch.Tensor:
            dropped = newly[problem.name][:, problem.columns] & problem.candidates
            groups = None if pattern is None else problem.columns // pattern.m
            removals = dropped.sum(1) if groups is None else _group_sums(dropped, groups)
            return admm_supports(problem.gram, problem.cross, problem.start,
                                 problem.candidates, removals, rho=self.rho,
                                 iterations=self.iterations, groups=groups)

        return choose


def _group_sums(dropped: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Removals per row and N:M group (n_out, groups) of a (n_out, m) bool mask."""
    sums = dropped.new_zeros((len(dropped), int(groups.max()) + 1), dtype=torch.long)
    return sums.index_add_(1, groups, dropped.long())
