"""The paper's experiments: settings, batched training, a resumable runner, a results store.

Each experiment is registered in :data:`EXPERIMENTS` with its full and quick settings and a
data loader ``load(variant) -> Split``; ``ecprune reproduce NAME`` runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .beyond import BEYOND_MNIST, BEYOND_MNIST_QUICK
from .config import ExperimentConfig
from .job import Split
from .mnist import MNIST, MNIST_QUICK, load_mnist_split
from .runner import RunReport, run_experiment


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: the paper's grid, a quick smoke-test grid, its data."""

    full: ExperimentConfig
    quick: ExperimentConfig
    load: Callable[..., Split]


EXPERIMENTS: dict[str, Experiment] = {
    "mnist": Experiment(full=MNIST, quick=MNIST_QUICK, load=load_mnist_split),
    "beyond-mnist": Experiment(full=BEYOND_MNIST, quick=BEYOND_MNIST_QUICK,
                               load=load_mnist_split),
}

__all__ = ["EXPERIMENTS", "Experiment", "ExperimentConfig", "RunReport", "Split",
           "run_experiment"]
