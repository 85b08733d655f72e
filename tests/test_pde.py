"""The diffusion-sorption generator against PDEBench's formulation, analytic solutions,
conservation, the maximum principle and itself at tighter tolerances; the cache."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
from scipy.sparse import diags
from scipy.special import erfc

from ecprune.data import pde
from ecprune.data.pde import DiffSorpGrid, DiffSorpProblem, SolverSettings, diffusion_sorption

SOLVE = {"cache": False, "progress": False, "workers": 1}


@pytest.fixture(scope="module")
def full():
    """Samples 0 and 1 on PDEBench's full grid with the default solver (0.2 s)."""
    return diffusion_sorption([0, 1], **SOLVE)


def pdebench_rhs(u, problem, dx):
    """PDEBench's form: sparse Laplacian matrix plus a boundary vector (sim_diff_sorp.py)."""
    n = len(u)
    lap = diags([-2 * np.ones(n), np.ones(n - 1), np.ones(n - 1)], [0, -1, 1]) / dx**2
    d = problem.diffusivity
    beta = (1 - problem.porosity) / problem.porosity * problem.rho_s * problem.k_f
    retardation = 1 + beta * problem.n_f * (u + 1e-6) ** (problem.n_f - 1)
    boundary = np.zeros(n)
    boundary[0] = d / retardation[0] / dx**2 * 1.0
    boundary[-1] = d / retardation[-1] / dx**2 * ((u[-2] - u[-1]) / dx * d)
    return d / retardation * (lap @ u) + boundary


def test_rhs_equals_pdebench_sparse_formulation():
    rng = np.random.default_rng(0)
    problem = DiffSorpProblem()
    for n in (3, 16, 1024):
        u = rng.uniform(0, 1, n)
        np.testing.assert_allclose(pde.rhs(u, problem, 1 / n), pdebench_rhs(u, problem, 1 / n),
                                   rtol=1e-12, atol=0)


def test_rhs_conserves_total_mass_up_to_boundary_fluxes():
    """d/dt sum dx (u + beta (u+eps)^n_f) = inflow - outflow, since R(u) = d(...)/du."""
    rng = np.random.default_rng(1)
    problem, n = DiffSorpProblem(), 50
    dx, d = 1 / n, problem.diffusivity
    u = rng.uniform(0, 1, n)
    beta = (1 - problem.porosity) / problem.porosity * problem.rho_s * problem.k_f
    assert beta * problem.n_f == pytest.approx(
        (problem.retardation(np.array([0.3]))[0] - 1) / (0.3 + 1e-6) ** (problem.n_f - 1))
    dmass_dt = dx * np.sum(problem.retardation(u) * pde.rhs(u, problem, dx))
    inflow = d * (problem.left_value - u[0]) / dx
    outflow = d * (u[-1] - d * (u[-2] - u[-1]) / dx) / dx
    assert dmass_dt == pytest.approx(inflow - outflow, rel=1e-12)


def test_initial_values_follow_pdebench_seeding():
    samples = [0, 1, 7, 99, 2**32 - 1]
    state = np.random.get_state()
    try:
        expected = []
        for i in samples:
            np.random.seed(i)
            expected.append(np.random.uniform(0, 0.2))
    finally:
        np.random.set_state(state)
    data = diffusion_sorption(samples, n_cells=8, n_times=2, t_final=1.0, **SOLVE)
    np.testing.assert_array_equal(data.u0, expected)
    np.testing.assert_array_equal(data.u[:, 0, :], np.repeat(data.u0[:, None], 8, axis=1))
    assert np.random.get_state()[1][0] == state[1][0]  # the global generator is untouched


def test_grid_is_pdebench_cell_centres_and_times(full):
    np.testing.assert_allclose(full.x, np.linspace(1 / 2048, 1 - 1 / 2048, 1024), rtol=0,
                               atol=1e-15)
    np.testing.assert_allclose(full.t, np.arange(0, 501, 5), rtol=0, atol=1e-12)
    assert full.u.shape == (2, 101, 1024)
    assert full.solver == SolverSettings("BDF", 1e-6, 1e-9)


def test_tightening_tolerances_tenfold_changes_less_than_1e_5(full):
    tight = diffusion_sorption([0, 1], rtol=1e-7, atol=1e-10, **SOLVE)
    assert np.abs(tight.u - full.u).max() < 1e-5


@pytest.mark.parametrize("n_cells", [64, 1024])
def test_maximum_principle_and_monotone_in_x(full, n_cells):
    """With 0 < u0 < 1 = inflow the solution stays in [0, 1] and decreases in x; slack: the
    integrator's absolute tolerance."""
    data = full if n_cells == 1024 else diffusion_sorption(range(5), n_cells=n_cells, **SOLVE)
    atol = data.solver.atol
    assert data.u.min() >= -atol and data.u.max() <= 1 + atol
    assert np.diff(data.u, axis=-1).max() <= atol
    assert (data.u[:, -1, 0] > data.u0).all() and (data.u[:, -1, -1] < data.u0).all()


def test_bdf_matches_rk45_at_tight_tolerance():
    tight = {"rtol": 1e-8, "atol": 1e-10}
    bdf = diffusion_sorption([3], n_cells=64, **tight, **SOLVE)
    rk45 = diffusion_sorption([3], n_cells=64, method="RK45", **tight, **SOLVE)
    assert np.abs(bdf.u - rk45.u).max() < 100 * tight["rtol"]


def test_rk45_defaults_to_pdebench_tolerances():
    data = diffusion_sorption([0], n_cells=16, n_times=2, t_final=5.0, method="RK45", **SOLVE)
    assert data.solver == SolverSettings("RK45", 1e-3, 1e-6)


def linear_limit_errors(n_cells):
    """k_f = 0 and u0 = 0: the heat equation from a step, u = erfc(x / 2 sqrt(D t)) while the
    front is far from x = 1. Errors against the boundary at the face x = 0 and at PDEBench's
    ghost-cell centre x = -dx/2."""
    problem = DiffSorpProblem(k_f=0.0, u0_high=0.0)
    t, width = 20.0, 2 * np.sqrt(problem.diffusivity * 20.0)  # erfc(1 / width) ~ 1e-12
    data = diffusion_sorption([0], n_cells=n_cells, n_times=2, t_final=t, problem=problem,
                              rtol=1e-10, atol=1e-12, **SOLVE)
    u, x, dx = data.u[0, -1], data.x, 1 / n_cells
    return (np.abs(u - erfc(x / width)).max(), np.abs(u - erfc((x + dx / 2) / width)).max())


def test_linear_limit_observed_orders():
    """First order against the PDE (the inflow value sits half a cell outside), second order
    against the same problem with the boundary where the scheme puts it."""
    errors = np.array([linear_limit_errors(n) for n in (64, 128, 256)])
    orders = np.log2(errors[:-1] / errors[1:])
    np.testing.assert_allclose(orders[:, 0], 1.0, atol=0.1)
    np.testing.assert_allclose(orders[:, 1], 2.0, atol=0.1)


def test_parallel_equals_serial():
    serial = diffusion_sorption([2, 0, 5], n_cells=32, n_times=5, **SOLVE)
    parallel = diffusion_sorption([2, 0, 5], n_cells=32, n_times=5, cache=False,
                                  progress=False, workers=2)
    np.testing.assert_array_equal(parallel.u, serial.u)
    assert parallel.samples == (2, 0, 5)


def test_duplicate_samples_give_identical_rows():
    data = diffusion_sorption([4, 4], n_cells=16, n_times=3, **SOLVE)
    np.testing.assert_array_equal(data.u[0], data.u[1])


SMALL = {"n_cells": 24, "n_times": 4, "t_final": 50.0, "progress": False, "workers": 1}


def test_cache_hit_returns_the_stored_solution(tmp_path):
    first = diffusion_sorption([0, 3], cache_dir=tmp_path, **SMALL)
    assert first.cache_hits == 0 and len(list(tmp_path.glob("*.npz"))) == 2
    second = diffusion_sorption([3, 0, 8], cache_dir=tmp_path, **SMALL)
    assert second.cache_hits == 2 and len(list(tmp_path.glob("*.npz"))) == 3
    np.testing.assert_array_equal(second.u[:2], first.u[::-1])


def test_a_changed_parameter_never_returns_stale_data(tmp_path):
    base = diffusion_sorption([1], cache_dir=tmp_path, **SMALL)
    changed = diffusion_sorption([1], cache_dir=tmp_path, problem=DiffSorpProblem(k_f=1e-4),
                                 **SMALL)
    assert changed.cache_hits == 0 and np.abs(changed.u - base.u).max() > 1e-3
    tighter = diffusion_sorption([1], cache_dir=tmp_path, rtol=1e-7, **SMALL)
    assert tighter.cache_hits == 0


def _changed(value):
    return not value if isinstance(value, bool) else value + 1 if isinstance(value, int) \
        else value * 1.5 + 1e-3 if isinstance(value, float) else "RK45"


@pytest.mark.parametrize("part", ["problem", "grid", "solver", "sample"])
def test_cache_key_depends_on_every_setting(part):
    settings = {"sample": 0, "problem": DiffSorpProblem(), "grid": DiffSorpGrid(),
                "solver": SolverSettings()}
    base = pde.cache_key(**settings)
    if part == "sample":
        assert pde.cache_key(**{**settings, "sample": 1}) != base
        return
    for f in dataclasses.fields(settings[part]):
        value = _changed(getattr(settings[part], f.name))
        other = dataclasses.replace(settings[part], **{f.name: value})
        assert pde.cache_key(**{**settings, part: other}) != base, f.name


def test_cache_key_depends_on_the_code_version(monkeypatch):
    settings = (0, DiffSorpProblem(), DiffSorpGrid(), SolverSettings())
    base = pde.cache_key(*settings)
    monkeypatch.setattr(pde, "SOLVER_VERSION", pde.SOLVER_VERSION + 1)
    assert pde.cache_key(*settings) != base


def test_foreign_or_corrupt_cache_files_are_solved_again(tmp_path):
    good = diffusion_sorption([2], cache_dir=tmp_path, **SMALL)
    (path,) = tmp_path.glob("*.npz")
    np.savez(path, u=np.zeros_like(good.u[0]), key=np.array("another key"))
    again = diffusion_sorption([2], cache_dir=tmp_path, **SMALL)
    assert again.cache_hits == 0
    np.testing.assert_array_equal(again.u, good.u)
    path.write_bytes(b"truncated")
    assert diffusion_sorption([2], cache_dir=tmp_path, **SMALL).cache_hits == 0
    assert diffusion_sorption([2], cache_dir=tmp_path, **SMALL).cache_hits == 1


def test_cache_location_and_opt_out(tmp_path, monkeypatch):
    monkeypatch.setenv("ECPRUNE_CACHE", str(tmp_path))
    assert pde.default_cache_dir() == tmp_path / "pde"
    diffusion_sorption([0], cache=False, **SMALL)
    assert not (tmp_path / "pde").exists()
    diffusion_sorption([0], **SMALL)
    assert len(list((tmp_path / "pde").glob("*.npz"))) == 1


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"samples": []}, ValueError, "'samples' parameter .* non-empty list of ints"),
    ({"samples": [-1]}, ValueError, "'samples' parameter"),
    ({"samples": [0.5]}, ValueError, "'samples' parameter"),
    ({"samples": 3}, TypeError, "'samples' parameter"),
    ({"n_cells": 2}, ValueError, "'n_cells' parameter .* int >= 3"),
    ({"n_times": 0}, ValueError, "'n_times' parameter .* int >= 1"),
    ({"t_final": -1.0}, ValueError, "'t_final' parameter .* positive"),
    ({"method": "Euler"}, ValueError, "'method' parameter .* 'BDF', 'RK45'. Got 'Euler'"),
    ({"rtol": 0.0}, ValueError, "'rtol' parameter .* Got 0.0"),
    ({"atol": "1e-6"}, ValueError, "'atol' parameter"),
    ({"workers": 0}, ValueError, "'workers' parameter .* int >= 1"),
    ({"problem": {"k_f": 1.0}}, TypeError, "'problem' parameter .* DiffSorpProblem"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    kwargs = {"samples": [0], **kwargs}
    with pytest.raises(error, match=match):
        diffusion_sorption(kwargs.pop("samples"), **{**SOLVE, **kwargs})


def test_missing_scipy_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)
    with pytest.raises(ImportError, match=r"needs SciPy: pip install 'ecprune\[experiments\]'"):
        diffusion_sorption([0], **{**SMALL, "cache": False})


@pytest.mark.parametrize(("field", "value"), [("diffusivity", 0.0), ("porosity", 1.5),
                                              ("n_f", -1.0), ("u0_high", -0.1)])
def test_bad_problem_constants_are_named(field, value):
    with pytest.raises(ValueError, match=f"DiffSorpProblem needs .* Got {field}={value!r}"):
        DiffSorpProblem(**{field: value})
