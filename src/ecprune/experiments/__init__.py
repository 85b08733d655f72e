"""The paper's experiments: settings, batched training, a resumable runner, a results store.

Each experiment is registered in :data:`EXPERIMENTS` with its full and quick settings and a
data loader ``load(variant) -> Split``; ``ecprune reproduce NAME`` runs it. The paper's two
are ``mnist`` (classification, cross-entropy) and ``diffsorp`` (regression, MSE, one variant
per noise level); ``beyond-mnist`` and ``beyond-diffsorp`` compare the methods beyond the paper
on their networks, prune only (:mod:`.beyond`); ``mixer-mnist`` prunes an MLP-Mixer, whose
layers see several rows per sample (:mod:`.mixer`); ``neurons`` and ``neurons-diffsorp``
compare neuron removal with Torch-Pruning's importances and the width-reduced baseline
(:mod:`.neurons`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .beyond import BEYOND_DIFFSORP, BEYOND_DIFFSORP_QUICK, BEYOND_MNIST, BEYOND_MNIST_QUICK
from .config import ExperimentConfig
from .diffsorp import DIFFSORP, DIFFSORP_QUICK, load_diffsorp_split, snapshot_figures
from .folder import ConfigMismatch
from .job import Split
from .lock import FolderBusy
from .mixer import MIXER_MNIST, MIXER_MNIST_QUICK
from .mnist import MNIST, MNIST_QUICK, load_mnist_split
from .neurons import NEURONS, NEURONS_DIFFSORP, NEURONS_DIFFSORP_QUICK, NEURONS_QUICK
from .runner import RunReport, run_experiment


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: the paper's grid, a quick smoke-test grid, its data, and
    optionally figures beyond the results CSV's (``figures(config, out, data_dir=...)``)."""

    full: ExperimentConfig
    quick: ExperimentConfig
    load: Callable[..., Split]
    figures: Callable[..., list[Path]] | None = None


EXPERIMENTS: dict[str, Experiment] = {
    "mnist": Experiment(full=MNIST, quick=MNIST_QUICK, load=load_mnist_split),
    "diffsorp": Experiment(full=DIFFSORP, quick=DIFFSORP_QUICK, load=load_diffsorp_split,
                           figures=snapshot_figures),
    "beyond-mnist": Experiment(full=BEYOND_MNIST, quick=BEYOND_MNIST_QUICK,
                               load=load_mnist_split),
    "beyond-diffsorp": Experiment(full=BEYOND_DIFFSORP, quick=BEYOND_DIFFSORP_QUICK,
                                  load=load_diffsorp_split),
    "mixer-mnist": Experiment(full=MIXER_MNIST, quick=MIXER_MNIST_QUICK, load=load_mnist_split),
    "neurons": Experiment(full=NEURONS, quick=NEURONS_QUICK, load=load_mnist_split),
    "neurons-diffsorp": Experiment(full=NEURONS_DIFFSORP, quick=NEURONS_DIFFSORP_QUICK,
                                   load=load_diffsorp_split),
}

__all__ = ["EXPERIMENTS", "ConfigMismatch", "Experiment", "ExperimentConfig", "FolderBusy",
           "RunReport", "Split", "run_experiment"]
