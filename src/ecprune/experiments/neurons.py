"""Neuron pruning side by side (issue 16): ecprune's unit removal against Torch-Pruning's own
importances, the width-reduced dense network trained from scratch, and unstructured ECP-refit at
the same weight count, on the same trained networks and at the same widths.

Every job (architecture x seed) trains the dense network (:func:`.job.train_dense`), then at each
fraction ``f`` removes ``round(f * n_l)`` units of every hidden layer (:func:`unit_counts`,
ecprune's ``scope="layer"`` counts), so that every structured method ends at the same widths:

- ``ecp``, ``ecp-refit``, ``obs``, ``magnitude``, ``random``: :func:`ecprune.prune_neurons`
  with that method, ``scope="layer"`` (its defaults otherwise);
- ``tp-magnitude``, ``tp-taylor``, ``tp-hessian``: Torch-Pruning's MetaPruner (:mod:`.peers`);
- ``weights-ecp-refit``: unstructured :func:`ecprune.prune` with ``"ecp-refit"`` to the weight
  count of those widths (masks, dense shapes);
- ``fully-connected``: a network of those widths trained from scratch for ``epochs +
  finetune_epochs`` (the experiments' width-reduced baseline, here reduced by units).

Each pruned network is evaluated ("prune") and fine-tuned for ``finetune_epochs`` with Adam
("finetune"; weight masks frozen for the unstructured one); the structured networks of one
fraction share their widths and are fine-tuned as one stacked model. The ``ratio`` column holds
the fraction of hidden units removed, ``kept`` the weights left. ``neurons`` runs the MNIST
networks 784-64-64-10 (the paper's) and 784-512-512-10, ``neurons-diffsorp`` the deep
diffusion-sorption network at noise d = 0.005 with its training protocol.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from torch.utils.data import TensorDataset

import ecprune

from ..masking.selection import layer_counts
from . import checkpoints
from .config import ExperimentConfig, weight_count
from .diffsorp import ARCHITECTURES, DIFFSORP_SHORT, noise_variant
from .job import FINETUNE_STREAM, FULLY_CONNECTED, JobRunner, _cost, _digest
from .methods import masked_template, parse_label, prune_copy
from .mnist import MNIST
from .peers import PEERS, prune_with_torch_pruning
from .stacked import StackedMLP, mlp
from .store import format_ratio
from .training import train

ECPRUNE_UNITS = ("ecp", "ecp-refit", "obs", "magnitude", "random")
STRUCTURED = (*ECPRUNE_UNITS, *PEERS)
UNSTRUCTURED = "weights-ecp-refit"
UNSTRUCTURED_METHOD = "ecp-refit"
FRACTIONS = (0.25, 0.5, 0.75, 0.875)
NEURON_SEEDS = (0, 1, 2)
NEURON_FINETUNE_EPOCHS = 3
# Weights of a zero-padded stack of baselines below which one stacked run is cheaper than
# separate ones (small networks: the per-step overhead, not the arithmetic, dominates).
STACK_WEIGHTS = 500_000


def hidden_linears(widths: tuple[int, ...]) -> list[str]:
    """Names of the hidden ``nn.Linear`` layers of :func:`.stacked.mlp` (``"0"``, ``"2"``, ...)."""
    return [str(2 * k) for k in range(len(widths) - 2)]


def unit_counts(widths: tuple[int, ...], fraction: float) -> dict[str, int]:
    """Units removed per hidden layer at ``fraction``: ecprune's ``scope="layer"`` counts.

    >>> unit_counts((784, 64, 64, 10), 0.875)
    {'0': 56, '2': 56}
    """
    return layer_counts(dict(zip(hidden_linears(widths), widths[1:-1], strict=True)), fraction)


def unit_widths(widths: tuple[int, ...], fraction: float) -> tuple[int, ...]:
    """The widths every structured method ends at.

    >>> unit_widths((68, 64, 32, 32, 16, 16, 1), 0.75)
    (68, 16, 8, 8, 4, 4, 1)
    """
    counts = unit_counts(widths, fraction)
    hidden = [w - counts[name] for name, w in zip(hidden_linears(widths), widths[1:-1],
                                                   strict=True)]
    return (widths[0], *hidden, widths[-1])


def model_widths(model: nn.Module) -> tuple[int, ...]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return (linears[0].in_features, *(m.out_features for m in linears))


def prune_units(model: nn.Sequential, split, fraction: float, label: str, *, seed: int,
                loss: str) -> float:
    """Remove :func:`unit_counts` units of every hidden layer of ``model`` in place with
    ``label`` (:data:`STRUCTURED`); returns the seconds. RuntimeError when the widths are not
    :func:`unit_widths`."""
    widths = model_widths(model)
    if label in PEERS:
        seconds = prune_with_torch_pruning(model, split.x_train, split.y_train,
                                           unit_counts(widths, fraction), method=label,
                                           loss=loss)
    elif label in ECPRUNE_UNITS:
        seconds = ecprune.prune_neurons(model, split.x_train, fraction, label, scope="layer",
                                        seed=seed, progress=False).seconds
    else:
        raise ValueError(f"Unknown structured method {label!r}; expected one of {STRUCTURED}.")
    if model_widths(model) != unit_widths(widths, fraction):
        raise RuntimeError(f"{label} left the widths {model_widths(model)}; expected "
                           f"{unit_widths(widths, fraction)}.")
    return seconds


class NeuronJobRunner(JobRunner):
    """The units of one job of a :class:`NeuronsConfig`; see the module docstring."""

    def run(self) -> None:
        dense = self.dense_if_needed()
        if dense is not None:
            for fraction in self.config.ratios:
                self.structured(dense, fraction)
            if self.config.unstructured:
                self.unstructured(dense)
        if self.config.fully_connected:
            self.baselines()
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    def _todo(self, labels, fractions) -> list[tuple[str, float]]:
        phases = ("prune", "finetune") if self.config.finetune else ("prune",)
        return [(m, f) for m in labels for f in fractions
                if any(self.missing(m, f, p) for p in phases)]

    def _prune_and_tune(self, cells: list[tuple[str, float]], models: list) -> None:
        """Evaluate and fine-tune the networks of ``cells`` lacking rows, stacked."""
        extras = [_cost(seconds) for _, seconds in models]
        missing = [k for k, (m, f) in enumerate(cells) if self.missing(m, f, "prune")]
        if missing:
            stacked = StackedMLP.from_models([models[k][0] for k in missing])
            self.write(self.evaluation_rows(stacked, [cells[k] for k in missing], "prune",
                                            self.config.epochs, [extras[k] for k in missing]))
        missing = [k for k, (m, f) in enumerate(cells) if self.missing(m, f, "finetune")]
        if not (self.config.finetune and missing):
            return
        todo = [cells[k] for k in missing]
        stacked = StackedMLP.from_models([models[k][0] for k in missing])
        epochs = self.config.finetune_epochs
        seconds = train(stacked, self.split.x_train, self.split.y_train,
                        self.settings(epochs, FINETUNE_STREAM),
                        checkpoint=self.checkpoints / f"finetune-{_digest(todo)}.pt")
        self.record_time("finetune", len(todo), epochs, seconds)
        self.write(self.evaluation_rows(stacked, todo, "finetune", self.config.epochs + epochs,
                                        [extras[k] for k in missing]))

    def structured(self, dense: nn.Sequential, fraction: float) -> None:
        cells = self._todo(self.config.structured, [fraction])
        if cells:
            self._prune_and_tune(cells, [self.units(dense, m, f) for m, f in cells])

    def units(self, dense: nn.Sequential, label: str, fraction: float):
        """``dense`` with units removed by ``label`` at ``fraction`` (checkpointed), seconds."""
        path = self.checkpoints / f"units-{label}-{format_ratio(fraction)}.pt"
        widths = unit_widths(self.job.widths, fraction)

        def restore(state: dict):
            model = mlp(widths, seed=0).to(self.device)
            model.load_state_dict(state["model"])
            return model, float(state["seconds"])

        saved = checkpoints.load(path, restore, map_location=self.device)
        if saved is not None:
            return saved
        model = copy.deepcopy(dense)
        seconds = prune_units(model, self.split, fraction, label, seed=self.job.seed,
                              loss=self.config.loss)
        self.record_time(f"units-{label}-{format_ratio(fraction)}", 1, 0, seconds)
        checkpoints.save({"model": model.state_dict(), "seconds": seconds}, path)
        return model, seconds

    def unstructured(self, dense: nn.Sequential) -> None:
        cells = self._todo([UNSTRUCTURED], self.config.ratios)
        if cells:
            self._prune_and_tune(cells, [self.weights(dense, f) for _, f in cells])

    def weights(self, dense: nn.Sequential, fraction: float):
        """``dense`` pruned by unstructured ECP-refit to the weights of :func:`unit_widths`."""
        path = self.checkpoints / f"weights-{format_ratio(fraction)}.pt"

        def restore(state: dict):
            model = masked_template(copy.deepcopy(dense))
            model.load_state_dict(state["model"])
            return model, float(state["seconds"])

        saved = checkpoints.load(path, restore, map_location=self.device)
        if saved is not None:
            return saved
        ratio = weight_ratio(self.job.widths, fraction)
        model, seconds = prune_copy(dense, TensorDataset(self.split.x_train, self.split.y_train),
                                    ratio, parse_label(UNSTRUCTURED_METHOD), seed=self.job.seed,
                                    loss=self.config.loss,
                                    nonlinear_samples=self.config.nonlinear_samples)
        self.record_time(f"{UNSTRUCTURED}-{format_ratio(fraction)}", 1, 0, seconds)
        checkpoints.save({"model": model.state_dict(), "seconds": seconds}, path)
        return model, seconds

    def baselines(self) -> None:
        """The networks of :func:`unit_widths` trained from scratch, the same budget: stacked
        (zero-padded to the widest) while that is small, else one at a time."""
        cells = [(FULLY_CONNECTED, f) for f in self.config.ratios
                 if self.missing(FULLY_CONNECTED, f, "finetune")]
        widths = [unit_widths(self.job.widths, f) for _, f in cells]
        padded = len(cells) * weight_count([max(column) for column in zip(*widths, strict=True)]) \
            if cells else 0
        groups = [cells] if padded <= STACK_WEIGHTS else [[cell] for cell in cells]
        for group in filter(None, groups):
            models = [mlp(unit_widths(self.job.widths, f), seed=self.job.seed).to(self.device)
                      for _, f in group]
            stacked = StackedMLP.from_models(models)
            epochs = self.config.baseline_epochs
            seconds = train(stacked, self.split.x_train, self.split.y_train,
                            self.settings(epochs),
                            checkpoint=self.checkpoints / f"fully-connected-{_digest(group)}.pt")
            self.record_time(FULLY_CONNECTED, len(group), epochs, seconds)
            self.write(self.evaluation_rows(stacked, group, "finetune", epochs))


def weight_ratio(widths: tuple[int, ...], fraction: float) -> float:
    """The weight-pruning ratio that leaves exactly the weights of :func:`unit_widths`
    (``ecprune.prune`` removes ``round(ratio * |W|)``)."""
    total = weight_count(widths)
    return (total - weight_count(unit_widths(widths, fraction))) / total


@dataclass(frozen=True)
class NeuronsConfig(ExperimentConfig):
    """An :class:`~.config.ExperimentConfig` whose ``ratios`` are fractions of hidden units,
    ``structured`` the unit-removal labels (:data:`STRUCTURED`), ``unstructured`` whether to
    add :data:`UNSTRUCTURED`; ``methods`` holds the weight method of that one (recorded in the
    results folder's configuration)."""

    structured: tuple[str, ...] = STRUCTURED
    unstructured: bool = True
    runner: ClassVar[type[JobRunner]] = NeuronJobRunner

    def __post_init__(self):
        super().__post_init__()
        unknown = [label for label in self.structured if label not in STRUCTURED]
        if unknown:
            raise ValueError(f"Unknown structured method(s) {unknown}; expected labels of "
                             f"{STRUCTURED}.")

    def job_cells(self) -> list[tuple[str, float, str]]:
        """``(method, fraction, phase)`` of every result row of one job."""
        phases = ("prune", "finetune") if self.finetune else ("prune",)
        labels = [*self.structured, *([UNSTRUCTURED] if self.unstructured else [])]
        cells = [("dense", 0.0, "dense")]
        cells += [(m, r, p) for p in phases for m in labels for r in self.ratios]
        if self.fully_connected:
            cells += [(FULLY_CONNECTED, r, "finetune") for r in self.ratios]
        return cells


def neurons_config(base: ExperimentConfig, **changes) -> NeuronsConfig:
    """``base``'s settings as a :class:`NeuronsConfig`, with ``changes``."""
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    defaults = {"methods": (UNSTRUCTURED_METHOD,), "ratios": FRACTIONS, "seeds": NEURON_SEEDS,
                "finetune_epochs": NEURON_FINETUNE_EPOCHS}
    return NeuronsConfig(**{**fields, **defaults, **changes})


NEURONS = neurons_config(MNIST, name="neurons",
                         architectures=((784, 64, 64, 10), (784, 512, 512, 10)))
# One small network, one seed, two fractions, 1 + 1 epochs: every label once in under a minute.
NEURONS_QUICK = dataclasses.replace(NEURONS, architectures=((784, 32, 32, 10),), seeds=(0,),
                                    ratios=(0.5, 0.875), epochs=1, finetune_epochs=1)

NEURONS_DIFFSORP = neurons_config(DIFFSORP_SHORT, name="neurons-diffsorp",
                                  architectures=ARCHITECTURES[1:],
                                  variants=(noise_variant(0.005),))
NEURONS_DIFFSORP_QUICK = dataclasses.replace(NEURONS_DIFFSORP, seeds=(0,), ratios=(0.5, 0.875),
                                             epochs=2, finetune_epochs=1)
