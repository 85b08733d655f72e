"""PDEBench's 1-D diffusion-sorption problem, solved for any list of sample indices.

The problem and its discretisation follow PDEBench's own generator,
``pdebench/data_gen/src/sim_diff_sorp.py`` (run by ``pdebench/data_gen/gen_diff_sorp.py`` with
``configs/diff-sorp.yaml``) in github.com/pdebench/PDEBench:

    du/dt = D / R(u) * d2u/dx2,   x in (0, 1),  t in (0, 500],
    R(u)  = 1 + (1 - phi) / phi * rho_s * k_f * n_f * (u + 1e-6) ** (n_f - 1)   (Freundlich),

on ``n_cells`` cell-centred finite volumes ``x_i = (i + 1/2) dx`` with the three-point Laplacian.
Both boundary conditions enter through ghost cells, exactly as in PDEBench: the left ghost
(``x = -dx/2``) holds ``u = 1`` and the right ghost (``x = 1 + dx/2``) holds
``D * (u[-2] - u[-1]) / dx``, i.e. ``u = -D du/dx`` with a one-sided difference (the outflow
condition that PDEBench's paper prints as ``u = D du/dx``). Sample ``i`` starts from the
spatially constant value ``u0 = RandomState(i).uniform(0, 0.2)``, the same number as PDEBench's
``np.random.seed(i); np.random.uniform(0, 0.2)``; results are stored at ``n_times`` evenly
spaced times from 0 to 500 (PDEBench's released file: 101 times, dt = 5).

PDEBench integrates with ``solve_ivp``'s default RK45 (rtol 1e-3, atol 1e-6);
``method="RK45"`` reproduces that. The default here is BDF with a tridiagonal Jacobian sparsity
pattern at rtol 1e-6, atol 1e-9, which is far more accurate (see docs/diffsorp-data.md).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import zipfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._validation import check_choice, check_positive_int
from ..atomic import write_file

# Bump when a change to this module changes the numbers it produces: it is part of the cache key.
SOLVER_VERSION = 1

# method -> (rtol, atol) used when the caller gives none. BDF: accurate (u is O(1), and atol
# keeps 1e-9 absolute accuracy where u0 is small); RK45: solve_ivp's defaults, as PDEBench used.
DEFAULT_TOLERANCES = {"BDF": (1e-6, 1e-9), "RK45": (1e-3, 1e-6)}
METHODS = tuple(DEFAULT_TOLERANCES)


@dataclass(frozen=True)
class DiffSorpProblem:
    """Constants of the diffusion-sorption problem (defaults: PDEBench's ``diff-sorp.yaml``).

    ``sorption_offset`` is the 1e-6 that PDEBench adds to ``u`` in ``R(u)`` so that the
    Freundlich term stays finite at ``u = 0``; ``u0_low``/``u0_high`` bound the uniform draw of
    the initial value. Setting ``k_f = 0`` gives the linear heat equation ``du/dt = D d2u/dx2``.
    """

    diffusivity: float = 5e-4
    porosity: float = 0.29
    rho_s: float = 2880.0
    k_f: float = 3.5e-4
    n_f: float = 0.874
    left_value: float = 1.0
    sorption_offset: float = 1e-6
    length: float = 1.0
    u0_low: float = 0.0
    u0_high: float = 0.2

    def __post_init__(self):
        checks = {"diffusivity": self.diffusivity > 0, "porosity": 0 < self.porosity <= 1,
                  "rho_s": self.rho_s >= 0, "k_f": self.k_f >= 0, "n_f": self.n_f > 0,
                  "sorption_offset": self.sorption_offset >= 0, "length": self.length > 0,
                  "u0_high": self.u0_low <= self.u0_high}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"DiffSorpProblem needs diffusivity > 0, 0 < porosity <= 1, rho_s, k_f, "
                    f"sorption_offset >= 0, n_f > 0, length > 0 and u0_low <= u0_high. "
                    f"Got {name}={getattr(self, name)!r}.")

    def retardation(self, u: np.ndarray) -> np.ndarray:
        """Freundlich retardation factor ``R(u)``."""
        beta = (1.0 - self.porosity) / self.porosity * self.rho_s * self.k_f * self.n_f
        return 1.0 + beta * (u + self.sorption_offset) ** (self.n_f - 1.0)

    def initial_value(self, sample: int) -> float:
        """PDEBench's ``np.random.seed(sample); np.random.uniform(low, high)``, without
        touching NumPy's global random state."""
        return float(np.random.RandomState(sample).uniform(self.u0_low, self.u0_high))


@dataclass(frozen=True)
class DiffSorpGrid:
    """Space-time grid: ``n_cells`` cells on ``(0, length)``, ``n_times`` stored times."""

    n_cells: int = 1024
    n_times: int = 101
    t_final: float = 500.0


@dataclass(frozen=True)
class SolverSettings:
    """``scipy.integrate.solve_ivp`` method and tolerances."""

    method: str = "BDF"
    rtol: float = 1e-6
    atol: float = 1e-9


@dataclass(frozen=True)
class DiffSorpData:
    """Solutions ``u`` (n_samples, n_times, n_cells) in float64 on cell centres ``x`` and
    times ``t``, the initial values ``u0`` (n_samples,) of ``samples``, the settings that made
    them, and how many samples came from the on-disk cache."""

    u: np.ndarray
    x: np.ndarray
    t: np.ndarray
    u0: np.ndarray
    samples: tuple[int, ...]
    problem: DiffSorpProblem
    grid: DiffSorpGrid
    solver: SolverSettings
    cache_hits: int = field(default=0, compare=False)


def cell_centres(grid: DiffSorpGrid, problem: DiffSorpProblem) -> np.ndarray:
    """``x_i = (i + 1/2) dx``, as PDEBench's ``linspace(dx/2, 1 - dx/2, n)``."""
    dx = problem.length / grid.n_cells
    return (np.arange(grid.n_cells) + 0.5) * dx


def rhs(u: np.ndarray, problem: DiffSorpProblem, dx: float) -> np.ndarray:
    """Semi-discrete right-hand side ``du/dt`` of PDEBench's finite-volume scheme."""
    d = problem.diffusivity
    right_ghost = d * (u[-2] - u[-1]) / dx
    lap = np.empty_like(u)
    lap[1:-1] = u[:-2] - 2.0 * u[1:-1] + u[2:]
    lap[0] = problem.left_value - 2.0 * u[0] + u[1]
    lap[-1] = u[-2] - 2.0 * u[-1] + right_ghost
    return d / problem.retardation(u) * lap / dx**2


def _scipy():
    try:
        import scipy.integrate
        import scipy.sparse
    except ImportError as exc:
        raise ImportError(
            "ecprune.data.diffusion_sorption needs SciPy: pip install 'ecprune[experiments]' "
            "(or pip install scipy)."
        ) from exc
    return scipy


def solve_sample(sample: int, problem: DiffSorpProblem, grid: DiffSorpGrid,
                 solver: SolverSettings) -> np.ndarray:
    """Solve one sample; returns ``u`` of shape (n_times, n_cells)."""
    scipy = _scipy()
    n = grid.n_cells
    dx = problem.length / n
    u0 = np.full(n, problem.initial_value(sample))
    options = {}
    if solver.method == "BDF":
        options["jac_sparsity"] = scipy.sparse.diags([1.0, 1.0, 1.0], [-1, 0, 1], shape=(n, n))
    # An explicit trial stage can overshoot below -sorption_offset near the outflow, where
    # R(u) is NaN: solve_ivp then rejects the step and retries a smaller one (as in PDEBench).
    with np.errstate(invalid="ignore"):
        result = scipy.integrate.solve_ivp(
            lambda _t, u: rhs(u, problem, dx), (0.0, grid.t_final), u0,
            method=solver.method, t_eval=np.linspace(0.0, grid.t_final, grid.n_times),
            rtol=solver.rtol, atol=solver.atol, **options,
        )
    if not result.success or not np.isfinite(result.y).all():
        raise RuntimeError(f"solve_ivp ({solver.method}) failed on diffusion-sorption sample "
                           f"{sample}: {result.message}")
    return result.y.T


def cache_key(sample: int, problem: DiffSorpProblem, grid: DiffSorpGrid,
              solver: SolverSettings) -> str:
    """SHA-256 of every setting that changes the numbers, including the code version."""
    scipy = _scipy()
    settings = {"problem": asdict(problem), "grid": asdict(grid), "solver": asdict(solver),
                "sample": sample, "solver_version": SOLVER_VERSION,
                "numpy": np.__version__, "scipy": scipy.__version__}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$ECPRUNE_CACHE/pde``, else ``$XDG_CACHE_HOME/ecprune/pde``, else
    ``~/.cache/ecprune/pde``."""
    root = os.environ.get("ECPRUNE_CACHE")
    if root:
        return Path(root) / "pde"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "ecprune" / "pde"


def _load(path: Path, key: str) -> np.ndarray | None:
    try:
        with path.open("rb") as handle, np.load(handle) as stored:  # closed whatever np.load raises
            if str(stored["key"]) == key:
                return stored["u"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # missing, truncated or foreign file: solve again
    return None


def _store(path: Path, key: str, u: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a killed run never leaves a half-written entry (and workers never collide).
    write_file(path, lambda handle: np.savez(handle, u=u, key=np.array(key)))


def diffusion_sorption(
    samples: Iterable[int],
    *,
    n_cells: int = 1024,
    n_times: int = 101,
    t_final: float = 500.0,
    problem: DiffSorpProblem | None = None,
    method: str = "BDF",
    rtol: float | None = None,
    atol: float | None = None,
    workers: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> DiffSorpData:
    """Solve PDEBench's 1-D diffusion-sorption problem for each index in ``samples``.

    Parameters
    ----------
    samples : sample indices (ints in [0, 2**32)); sample ``i`` is PDEBench's seed ``i``.
    n_cells, n_times, t_final : grid (PDEBench: 1024 cells, 101 times from 0 to 500).
    problem : constants (default :class:`DiffSorpProblem`, PDEBench's values).
    method : ``"BDF"`` (default, tridiagonal Jacobian sparsity) or ``"RK45"`` (PDEBench's).
    rtol, atol : tolerances; default per method, see ``DEFAULT_TOLERANCES``.
    workers : processes over samples (default ``min(2, cpu count)``; 1 solves in-process).
    cache, cache_dir : keep one ``.npz`` per sample under ``cache_dir`` (default
        :func:`default_cache_dir`), keyed by :func:`cache_key` of every setting.
    progress : tqdm bar over the samples that are solved.

    Returns
    -------
    DiffSorpData with ``u`` of shape (len(samples), n_times, n_cells), float64.

    >>> data = diffusion_sorption([0, 1], n_cells=32, n_times=3, cache=False, workers=1)
    >>> data.u.shape, data.t.tolist(), round(float(data.u0[0]), 6)
    ((2, 3, 32), [0.0, 250.0, 500.0], 0.109763)
    """
    samples = _check_samples(samples)
    grid = _check_grid(n_cells, n_times, t_final)
    problem = DiffSorpProblem() if problem is None else problem
    if not isinstance(problem, DiffSorpProblem):
        raise TypeError("The 'problem' parameter of diffusion_sorption must be a "
                        f"DiffSorpProblem or None. Got {type(problem).__name__} instead.")
    solver = _check_solver(method, rtol, atol)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    check_positive_int("workers", workers, caller="diffusion_sorption")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    keys = {i: cache_key(i, problem, grid, solver) for i in samples}
    solved = {}
    if cache:
        for i, key in keys.items():
            u = _load(root / f"diffsorp-{key[:32]}.npz", key)
            if u is not None:
                solved[i] = u
    hits = len(solved)
    missing = [i for i in dict.fromkeys(samples) if i not in solved]
    for i, u in zip(missing, _solve_all(missing, problem, grid, solver, workers, progress),
                    strict=True):
        solved[i] = u
        if cache:
            _store(root / f"diffsorp-{keys[i][:32]}.npz", keys[i], u)
    return DiffSorpData(
        u=np.stack([solved[i] for i in samples]),
        x=cell_centres(grid, problem),
        t=np.linspace(0.0, grid.t_final, grid.n_times),
        u0=np.array([problem.initial_value(i) for i in samples]),
        samples=samples, problem=problem, grid=grid, solver=solver, cache_hits=hits,
    )


def _solve_all(samples: list[int], problem: DiffSorpProblem, grid: DiffSorpGrid,
               solver: SolverSettings, workers: int, progress: bool) -> Iterable[np.ndarray]:
    """Yield the solutions of ``samples`` in order, over a process pool when it helps."""
    bar = tqdm(total=len(samples), desc="diffusion-sorption", unit="sample",
               disable=not progress or not samples)
    n = len(samples)
    with bar:
        if min(workers, n) <= 1:
            for i in samples:
                yield solve_sample(i, problem, grid, solver)
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=_pool_context()) as pool:
            for u in pool.map(solve_sample, samples, [problem] * n, [grid] * n, [solver] * n):
                yield u
                bar.update()


def _pool_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` where available (Python 3.14's default on POSIX): forking a process
    that already runs torch's threads can deadlock, and Python >= 3.12 warns about it."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _check_samples(samples: object) -> tuple[int, ...]:
    message = ("The 'samples' parameter of diffusion_sorption must be a non-empty list of "
               "ints in [0, 2**32) (PDEBench's seeds). Got {!r} instead.")
    try:
        values = tuple(samples)
    except TypeError:
        raise TypeError(message.format(samples)) from None
    valid = all(isinstance(i, int | np.integer) and not isinstance(i, bool) and 0 <= i < 2**32
                for i in values)
    if not values or not valid:
        raise ValueError(message.format(samples))
    return tuple(int(i) for i in values)


def _check_grid(n_cells: int, n_times: int, t_final: float) -> DiffSorpGrid:
    check_positive_int("n_times", n_times, caller="diffusion_sorption")
    if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 3:
        raise ValueError("The 'n_cells' parameter of diffusion_sorption must be an int >= 3 "
                         f"(the outflow boundary uses two cells). Got {n_cells!r} instead.")
    if not isinstance(t_final, int | float) or not 0.0 < t_final < np.inf:
        raise ValueError("The 't_final' parameter of diffusion_sorption must be a positive "
                         f"finite float. Got {t_final!r} instead.")
    return DiffSorpGrid(n_cells=n_cells, n_times=n_times, t_final=float(t_final))


def _check_solver(method: str, rtol: float | None, atol: float | None) -> SolverSettings:
    check_choice("method", method, METHODS, caller="diffusion_sorption")
    default_rtol, default_atol = DEFAULT_TOLERANCES[method]
    tolerances = {"rtol": default_rtol if rtol is None else rtol,
                  "atol": default_atol if atol is None else atol}
    for name, value in tolerances.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"The '{name}' parameter of diffusion_sorption must be a float in "
                             f"(0, 1), or None for the default of {method!r}. "
                             f"Got {value!r} instead.")
    return SolverSettings(method=method, rtol=float(tolerances["rtol"]),
                          atol=float(tolerances["atol"]))
