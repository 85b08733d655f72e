"""The paper's diffusion-sorption subset: shapes, subgrid, split by sample, noise, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecprune.data import DiffSorpData, DiffSorpProblem, diffsorp_dataset, diffusion_sorption
from ecprune.data import diffsorp as diffsorp_module
from ecprune.data.pde import DiffSorpGrid, SolverSettings


@pytest.fixture(scope="module")
def data():
    """Ten samples on a coarse grid: 128 cells, 21 stored times (every 25 time units)."""
    return diffusion_sorption(range(10), n_cells=128, n_times=21, cache=False, progress=False,
                              workers=1)


def grid_view(targets, n_samples):
    return targets.reshape(n_samples, 10, 64)


def test_shapes_and_feature_names(data):
    ds = diffsorp_dataset(data=data)
    assert ds.train_inputs.shape == (8 * 10 * 64, 68) and ds.train_targets.shape == (5120, 1)
    assert ds.test_inputs.shape == (2 * 640, 68) and ds.test_targets.shape == (1280, 1)
    assert ds.test_targets_clean.shape == (1280, 1)
    assert ds.feature_names[:5] == ("mu_k_f", "mu_n_f", "t", "x", "u0_0")
    assert len(ds.feature_names) == 68 and ds.feature_names[-1] == "u0_63"
    assert ds.train_inputs.dtype == torch.float32
    assert diffsorp_dataset(data=data, dtype=torch.float64).test_targets.dtype == torch.float64


def test_paper_subgrid_on_pdebench_grid():
    """On 101 times x 1024 cells: t = 50, ..., 500 and cells 0, 16, ..., 1008."""
    grid, problem = DiffSorpGrid(), DiffSorpProblem()
    u = np.random.default_rng(0).uniform(size=(3, 101, 1024))
    fake = DiffSorpData(u=u, x=(np.arange(1024) + 0.5) / 1024, t=np.linspace(0, 500, 101),
                        u0=u[:, 0, 0], samples=(0, 1, 2), problem=problem, grid=grid,
                        solver=SolverSettings())
    ds = diffsorp_dataset(data=fake, test_fraction=1 / 3, dtype=torch.float64)
    np.testing.assert_array_equal(ds.times, np.arange(50, 501, 50))
    np.testing.assert_array_equal(ds.x, (16 * np.arange(64) + 0.5) / 1024)
    (test,) = ds.test_samples
    expected = u[test][10::10][:, ::16]
    np.testing.assert_array_equal(grid_view(ds.test_targets_clean, 1)[0], expected)


def test_inputs_are_mu_t_x_u0_standardised_on_training_rows(data):
    ds = diffsorp_dataset(data=data, dtype=torch.float64)
    raw = ds.train_inputs * ds.input_scale + ds.input_mean
    rows = raw.reshape(8, 10, 64, 68)
    np.testing.assert_allclose(rows[..., 0], 3.5e-4, rtol=1e-15)
    np.testing.assert_allclose(rows[..., 1], 0.874, rtol=1e-15)
    np.testing.assert_allclose(rows[0, :, 0, 2], data.t[2::2], rtol=1e-14)
    np.testing.assert_allclose(rows[0, 0, :, 3], data.x[::2], rtol=1e-13)
    u0 = data.u0[list(ds.train_samples)]
    np.testing.assert_allclose(rows[..., 4:], np.broadcast_to(u0[:, None, None, None],
                                                              rows[..., 4:].shape), rtol=1e-13)
    assert (ds.train_inputs[:, :2] == 0).all()  # constant mu: centred on itself, exactly 0
    varying = ds.train_inputs[:, 2:]
    torch.testing.assert_close(varying.mean(0), torch.zeros(66, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(varying.std(0, correction=0), torch.ones(66, dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_split_is_by_sample_seeded_and_complete(data):
    ds = diffsorp_dataset(data=data, seed=3, test_fraction=0.3)
    assert len(ds.test_samples) == 3 and not set(ds.train_samples) & set(ds.test_samples)
    assert sorted(ds.train_samples + ds.test_samples) == list(range(10))
    clean = grid_view(ds.test_targets_clean, 3).numpy()
    expected = data.u[list(ds.test_samples)][:, 2::2][:, :, ::2]
    np.testing.assert_allclose(clean, expected, rtol=1e-6)
    again = diffsorp_dataset(data=data, seed=3, test_fraction=0.3)
    assert again.test_samples == ds.test_samples
    splits = {diffsorp_dataset(data=data, seed=s).test_samples for s in range(5)}
    assert len(splits) > 1


def test_without_noise_targets_are_the_solution(data):
    ds = diffsorp_dataset(data=data, noise=0.0)
    torch.testing.assert_close(ds.test_targets, ds.test_targets_clean, rtol=0, atol=0)


@pytest.mark.parametrize("noise", [0.005, 0.01])
def test_noise_is_uniform_and_bounded(data, noise):
    ds = diffsorp_dataset(data=data, noise=noise, dtype=torch.float64)
    clean = diffsorp_dataset(data=data, noise=0.0, dtype=torch.float64)
    train = (ds.train_targets - clean.train_targets).numpy().ravel()
    test = (ds.test_targets - ds.test_targets_clean).numpy().ravel()
    for draw in (train, test):
        assert np.abs(draw).max() <= noise and np.abs(draw).max() > 0.99 * noise
        standard_error = noise / np.sqrt(3 * len(draw))
        assert abs(draw.mean()) < 5 * standard_error
        assert draw.var() == pytest.approx(noise**2 / 3, rel=0.1)
    torch.testing.assert_close(ds.train_inputs, clean.train_inputs, rtol=0, atol=0)


def test_noise_levels_share_one_draw_per_seed(data):
    clean = diffsorp_dataset(data=data, dtype=torch.float64)
    small = diffsorp_dataset(data=data, noise=0.005, dtype=torch.float64)
    large = diffsorp_dataset(data=data, noise=0.01, dtype=torch.float64)
    torch.testing.assert_close(large.train_targets - clean.train_targets,
                               2 * (small.train_targets - clean.train_targets),
                               rtol=1e-9, atol=1e-15)
    other = diffsorp_dataset(data=data, noise=0.005, seed=1, dtype=torch.float64)
    assert not torch.equal(other.test_targets, small.test_targets)


def test_default_data_is_samples_0_to_99_on_pdebench_grid(data, monkeypatch):
    calls = []

    def fake(samples, **kwargs):
        calls.append((samples, kwargs))
        return data

    monkeypatch.setattr(diffsorp_module, "diffusion_sorption", fake)
    diffsorp_dataset(workers=1, progress=False)
    assert calls == [(range(100), {"workers": 1, "progress": False})]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"noise": -0.01}, ValueError, r"'noise' parameter .* \[0.0, inf\). Got -0.01"),
    ({"noise": float("nan")}, ValueError, "'noise' parameter"),
    ({"test_fraction": 1.0}, ValueError, r"'test_fraction' parameter .* \(0.0, 1.0\)"),
    ({"test_fraction": 0.01}, ValueError, "leaves 0 of 10 samples for testing"),
    ({"seed": -1}, ValueError, "'seed' parameter .* int >= 0"),
    ({"dtype": torch.int64}, TypeError, "'dtype' parameter .* floating torch dtype"),
    ({"n_points": 60}, ValueError, "n_points to divide the 128 cells"),
    ({"n_snapshots": 3}, ValueError, "n_snapshots to divide the 20 time steps"),
])
def test_bad_arguments_are_named(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        diffsorp_dataset(data=data, **kwargs)
