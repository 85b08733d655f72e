"""The paper's diffusion-sorption subset as a supervised regression dataset.

Samples 0-99 of PDEBench's problem (:func:`~ecprune.data.pde.diffusion_sorption`), 10 of the
101 stored times and 64 of the 1024 cells, one row per (sample, time, point) with input
``(mu, t, x, u0 at the 64 points)`` of width 68 and the scalar target ``u(t, x)``. Choices the
paper leaves open (documented in docs/diffsorp-data.md):

* times ``t = 50, 100, ..., 500`` (stored indices 10, 20, ..., 100); ``t = 0`` is left out
  because there ``u = u0``, which is already an input;
* cells ``0, 16, ..., 1008`` (``x = (16 k + 1/2) / 1024``), PDEBench's own ``[::16]``
  reduced resolution, which keeps the cell next to the inflow;
* ``mu = (k_f, n_f)``, the two Freundlich parameters of the sorption law. They are the same in
  every sample of PDEBench's data (only ``u0`` varies), so they carry no information here;
  they fix the input width at the paper's 68 and would let data with other isotherms share it;
* noise ``U(-d, d)``, i.i.d. per value, on every target (train and test: the test loss is
  measured against noisy data, as the paper's snapshot figure shows); the inputs are exact
  (``u0`` and ``mu`` are the problem's prescribed data, not measurements) and the clean test
  targets are kept in ``test_targets_clean``. For one ``seed`` the noise is the same draw
  scaled by ``d``, so noise levels differ only in amplitude;
* the split is by sample (test trajectories are unseen), a seeded permutation;
* inputs are standardised with the training rows' mean and standard deviation (a constant
  column, such as ``mu``, is only centred, so it is zero); targets stay in units of ``u``.

Rows are ordered by sample, then time, then point: ``targets.reshape(n_samples, 10, 64)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_positive_int
from .pde import DiffSorpData, SolverSettings, diffusion_sorption

PAPER_SAMPLES = range(100)
NOISE_LEVELS = (0.0, 0.005, 0.01)
_SPLIT_STREAM, _NOISE_STREAM = 0, 1  # independent random streams of one seed


@dataclass(frozen=True)
class DiffSorpDataset:
    """Train/test tensors of the diffusion-sorption subset and how they were made.

    ``*_inputs``: (rows, 2 + 1 + 1 + n_points), standardised; ``*_targets``: (rows, 1) with
    noise; ``test_targets_clean``: without. ``times`` (n_snapshots,) and ``x`` (n_points,) are
    the selected grid; ``input_mean``/``input_scale`` undo the standardisation
    (``raw = inputs * input_scale + input_mean``).
    """

    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor
    test_targets_clean: torch.Tensor
    train_samples: tuple[int, ...]
    test_samples: tuple[int, ...]
    times: np.ndarray
    x: np.ndarray
    input_mean: torch.Tensor
    input_scale: torch.Tensor
    feature_names: tuple[str, ...]
    noise: float
    seed: int
    solver: SolverSettings


def diffsorp_dataset(
    *,
    noise: float = 0.0,
    seed: int = 0,
    test_fraction: float = 0.2,
    data: DiffSorpData | None = None,
    n_snapshots: int = 10,
    n_points: int = 64,
    dtype: torch.dtype = torch.float32,
    workers: int | None = None,
    progress: bool = True,
) -> DiffSorpDataset:
    """Build the paper's diffusion-sorption regression data set.

    Parameters
    ----------
    noise : half-width ``d`` of the uniform noise on the targets (paper: 0, 0.005, 0.01).
    seed : seeds the train/test split and the noise (independent streams).
    test_fraction : share of the samples (trajectories) held out for testing.
    data : solutions to subsample (default: samples 0-99 on PDEBench's grid, BDF, cached).
    n_snapshots, n_points : times and cells kept, evenly strided (must divide the grid).
    dtype : floating dtype of the tensors.
    workers, progress : passed to :func:`diffusion_sorption` when ``data`` is None.

    >>> from ecprune.data import diffusion_sorption
    >>> data = diffusion_sorption(range(10), n_cells=128, cache=False, workers=1)
    >>> ds = diffsorp_dataset(noise=0.01, data=data, progress=False)
    >>> tuple(ds.train_inputs.shape), tuple(ds.test_targets.shape), ds.test_samples
    ((5120, 68), (1280, 1), (4, 9))
    """
    noise = _check_fraction("noise", noise, low=0.0, high=math.inf, closed=True)
    test_fraction = _check_fraction("test_fraction", test_fraction, low=0.0, high=1.0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"The 'seed' parameter of diffsorp_dataset must be an int >= 0. "
                         f"Got {seed!r} instead.")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"The 'dtype' parameter of diffsorp_dataset must be a floating torch "
                        f"dtype such as torch.float32. Got {dtype!r} instead.")
    if data is None:
        data = diffusion_sorption(PAPER_SAMPLES, workers=workers, progress=progress)
    times, cells = _subgrid(data, n_snapshots, n_points)
    clean = data.u[:, times][:, :, cells, None]  # (S, n_snapshots, n_points, 1)
    streams = np.random.SeedSequence(seed).spawn(2)
    uniform = np.random.default_rng(streams[_NOISE_STREAM]).uniform(-1.0, 1.0, clean.shape)
    noisy = clean + noise * uniform
    inputs = _features(data, times, cells)  # (S, n_snapshots, n_points, width)
    train, test = _split(len(data.samples), test_fraction, streams[_SPLIT_STREAM])
    mean, scale = _standardisation(inputs[train])

    def rows(array: np.ndarray, which: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array[which].reshape(-1, array.shape[-1]), dtype=dtype)

    return DiffSorpDataset(
        train_inputs=rows((inputs - mean) / scale, train), train_targets=rows(noisy, train),
        test_inputs=rows((inputs - mean) / scale, test), test_targets=rows(noisy, test),
        test_targets_clean=rows(clean, test),
        train_samples=tuple(data.samples[i] for i in train),
        test_samples=tuple(data.samples[i] for i in test),
        times=data.t[times], x=data.x[cells],
        input_mean=torch.as_tensor(mean, dtype=dtype),
        input_scale=torch.as_tensor(scale, dtype=dtype),
        feature_names=("mu_k_f", "mu_n_f", "t", "x",
                       *(f"u0_{j}" for j in range(len(cells)))),
        noise=noise, seed=seed, solver=data.solver,
    )


def _subgrid(data: DiffSorpData, n_snapshots: int, n_points: int) -> tuple[np.ndarray, ...]:
    """Stored-time indices ``s, 2s, ..., n_snapshots s`` and cells ``0, c, 2c, ...``."""
    check_positive_int("n_snapshots", n_snapshots, caller="diffsorp_dataset")
    check_positive_int("n_points", n_points, caller="diffsorp_dataset")
    n_times, n_cells = data.u.shape[1:]
    if (n_times - 1) % n_snapshots or n_cells % n_points:
        raise ValueError(
            f"diffsorp_dataset needs n_snapshots to divide the {n_times - 1} time steps and "
            f"n_points to divide the {n_cells} cells of 'data'. Got n_snapshots={n_snapshots}, "
            f"n_points={n_points}; pick divisors or generate data on a matching grid.")
    step = (n_times - 1) // n_snapshots
    return np.arange(1, n_snapshots + 1) * step, np.arange(n_points) * (n_cells // n_points)


def _features(data: DiffSorpData, times: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Raw inputs ``(k_f, n_f, t, x, u(0, x_cells))`` of every (sample, time, point)."""
    n_samples, width = len(data.samples), 4 + len(cells)
    out = np.empty((n_samples, len(times), len(cells), width))
    out[..., 0] = data.problem.k_f
    out[..., 1] = data.problem.n_f
    out[..., 2] = data.t[times][None, :, None]
    out[..., 3] = data.x[cells][None, None, :]
    out[..., 4:] = data.u[:, 0, cells][:, None, None, :]
    return out


def _split(n: int, test_fraction: float, seed: np.random.SeedSequence) -> tuple[np.ndarray, ...]:
    """Sorted train and test sample positions; at least one of each."""
    n_test = round(test_fraction * n)
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"The 'test_fraction' parameter of diffsorp_dataset leaves {n_test} of {n} "
            f"samples for testing; it must leave at least one for each of train and test.")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _standardisation(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of the training rows. A constant column is only
    centred, on its own value so that it becomes exactly zero (scale 1, as in scikit-learn's
    StandardScaler)."""
    flat = train.reshape(-1, train.shape[-1])
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    constant = (flat == flat[0]).all(axis=0)
    return np.where(constant, flat[0], mean), np.where(constant, 1.0, std)


def _check_fraction(name: str, value: object, *, low: float, high: float,
                    closed: bool = False) -> float:
    inside = (isinstance(value, int | float) and not isinstance(value, bool)
              and (low <= value if closed else low < value) and value < high)
    if not inside or not math.isfinite(value):
        bounds = f"[{low}, {high})" if closed else f"({low}, {high})"
        raise ValueError(f"The '{name}' parameter of diffsorp_dataset must be a float in "
                         f"{bounds}. Got {value!r} instead.")
    return float(value)
