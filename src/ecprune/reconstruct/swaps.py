"""Exact kept <-> pruned swaps of a row's support under the least-squares refit objective:
``refine="swaps"``.

After a mask is chosen (ECP's scores, or ADMM), a row may still do better by exchanging one kept
weight for one pruned weight of the same row, keeping the count. Following SparseSwaps
(M. Zimmer, C. Spiegel, S. Pokutta, "SparseSwaps: tractable LLM pruning mask refinement at
scale", 2025), every single swap is evaluated exactly from the row's Gram matrix and the best
one is taken, until none lowers the objective or the budget is spent.

The objective of row ``i`` on support ``K`` (its kept weights plus the bias, which never leaves)
is the refit's (:mod:`ecprune.reconstruct.refit`) with a fixed start row ``w0``:

    f(K) = min_{w: w_j = 0 off K} ||X w - u||^2 + lambda ||w - w0||^2
         = ||u||^2 + lambda ||w0||^2 - phi(K),     phi(K) = b_K^T M_KK^-1 b_K,

with ``M = G + lambda I`` (``G = X^T X``, ``X = [a, 1]``), ``b = X^T u + lambda w0``. So a swap
lowers ``f`` exactly when it raises ``phi``. With ``W = M_KK^-1``, ``w = W b_K`` and, for a
column ``q`` off ``K``, ``t_q = M_qK W``, ``g_q = b_q - M_qK w`` and ``d_q = M_qq - t_q M_Kq``
(the Schur complement of ``q``), removing ``p`` and adding ``q`` gives (OBS removal, then the
Schur update of the smaller support)

    phi(K - p + q) = phi - w_p^2 / W_pp + (g_q + t_qp w_p / W_pp)^2 / (d_q + t_qp^2 / W_pp),

every pair at once in O(|R| |K|) after one O(|R| |K|^2) product (``R``: the row's pruned
columns). One swap per round, the support refactorised each round (exact, no drift).

Budget: at most ``max_swaps`` swaps per row; a swap must raise ``phi`` by more than
:data:`SWAP_RTOL` of ``phi`` (below that it is rounding, and accepting it could cycle).
"""

from __future__ import annotations

import torch

# A swap must raise phi by more than this fraction of phi (float64 rounding of the formulas
# above is about 1e-13 relative on well-conditioned rows).
SWAP_RTOL = 1e-10
# Only when M_KK is singular (damping 0, a dead or duplicated input kept): this fraction of
# mean(diag M_KK) is added to its diagonal so that it factorises.
SINGULAR_FLOOR = 1e-12


def _factor(block: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of ``block``, with :data:`SINGULAR_FLOOR` added if it is singular."""
    factor, info = torch.linalg.cholesky_ex(block)
    if int(info) == 0:
        return factor
    eye = torch.eye(len(block), dtype=block.dtype, device=block.device)
    floor = SINGULAR_FLOOR * block.diagonal().mean().clamp_min(torch.finfo(block.dtype).tiny)
    return torch.linalg.cholesky(block + floor * eye)


def support_value(gram: torch.Tensor, rhs: torch.Tensor, lam: float,
                  support: torch.Tensor) -> float:
    """``phi(K) = b_K^T M_KK^-1 b_K`` of the bool ``support``, ``M = gram + lam I`` (see the
    module docstring)."""
    index = torch.nonzero(support).squeeze(1)
    block = gram[index][:, index] + lam * torch.eye(len(index), dtype=gram.dtype,
                                                      device=gram.device)
    solution = torch.cholesky_solve(rhs[index, None], _factor(block))[:, 0]
    return float(rhs[index] @ solution)


def swap_gains(block: torch.Tensor, cross: torch.Tensor, diagonal: torch.Tensor,
               rhs_kept: torch.Tensor, rhs_out: torch.Tensor, fixed: torch.Tensor):
    """``phi`` of a support ``K`` and the gains ``phi(K - p + q) - phi(K)`` of every swap.

    ``block`` (k, k): ``M_KK``; ``cross`` (r, k): ``M_RK`` of the columns ``R`` off ``K``;
    ``diagonal`` (r,): ``M_qq``; ``rhs_kept`` (k,) and ``rhs_out`` (r,): ``b_K`` and ``b_R``;
    ``fixed`` (k,): the kept columns that never leave (the bias), whose gains are ``-inf``.
    Returns ``(phi, gains (r, k))``.
    """
    inverse = torch.cholesky_inverse(_factor(block))
    solution = inverse @ rhs_kept
    phi = float(rhs_kept @ solution)
    t = cross @ inverse  # (r, k)
    g = rhs_out - cross @ solution  # (r,)
    schur = diagonal - (t * cross).sum(1)  # (r,)
    inverse_diagonal = inverse.diagonal()
    ratio = solution / inverse_diagonal
    numerator = (g[:, None] + t * ratio[None, :]).square()
    denominator = schur[:, None] + t.square() / inverse_diagonal[None, :]
    tiny = torch.finfo(block.dtype).eps * diagonal[:, None]
    gains = numerator / denominator.clamp_min(tiny) - (solution * ratio)[None, :]
    gains[:, fixed] = -torch.inf
    return phi, gains


def best_swaps(gram: torch.Tensor, rhs: torch.Tensor, lam: float, kept: torch.Tensor,
               candidates: torch.Tensor, fixed: torch.Tensor, max_swaps: int,
               groups: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Apply the best single swap until none raises ``phi`` (lowers the refit objective) by
    more than :data:`SWAP_RTOL` of it, or ``max_swaps`` were made.

    ``gram`` (n, n) and ``rhs`` (n,): ``G`` and ``b`` of the row, ``M = G + lam I``;
    ``kept``, ``candidates`` and ``fixed`` (n,) bool: the support, the columns it may use and
    those that never leave (the bias); ``groups`` (n,): each column's N:M group, swaps then
    stay within a group, which keeps the pattern. Returns the new support and the number of
    swaps.
    """
    index = torch.nonzero(candidates).squeeze(1)
    local = gram[index][:, index]  # the row's candidate columns only
    b, diagonal, never = rhs[index], local.diagonal() + lam, fixed[index]
    group_of = None if groups is None else groups[index]
    inside = kept[index].clone()
    kept_at = torch.nonzero(inside).squeeze(1)  # candidate positions, in `columns` order
    columns = local[:, kept_at].clone()  # (n_c, k): M's columns of the support
    eye = lam * torch.eye(len(kept_at), dtype=gram.dtype, device=gram.device)
    done = 0
    while done < max_swaps and not inside.all() and not never[kept_at].all():
        out_at = torch.nonzero(~inside).squeeze(1)
        phi, gains = swap_gains(columns[kept_at] + eye, columns[out_at], diagonal[out_at],
                                b[kept_at], b[out_at], never[kept_at])
        if groups is not None:
            gains[group_of[out_at][:, None] != group_of[kept_at][None, :]] = -torch.inf
        q, p = divmod(int(torch.argmax(gains)), gains.shape[1])
        if not float(gains[q, p]) > SWAP_RTOL * abs(phi):
            break
        inside[kept_at[p]], inside[out_at[q]] = False, True
        kept_at[p] = out_at[q]
        columns[:, p] = local[:, out_at[q]]
        done += 1
    result = torch.zeros_like(kept)
    result[index[inside]] = True
    return result, done
