"""One job of an experiment: a (variant, architecture, seed) taken through the whole protocol.

Units, in order, each skipped when its rows are already in the results CSV:

1. ``train-dense``: train the dense network (kept as a checkpoint until the job ends);
2. ``score-<method>``: score it once per method (scores kept as checkpoints too), prune a copy
   at every ratio with :func:`ecprune.prune_by_importance`, evaluate ("prune" rows); a method
   label with steps or a data-driven weight update (:mod:`.methods`) is pruned with
   :func:`ecprune.prune` once per ratio instead, each pruned network kept as a checkpoint; the
   time of one gradient pass over the training set is recorded as the unit of cost;
3. ``finetune``: all pruned networks of the job fine-tuned at once as one stacked model, masks
   frozen ("finetune" rows);
4. ``fully-connected``: the width-reduced dense baselines, stacked, trained from scratch.

Batched training checkpoints every epoch, so a killed job loses at most one epoch of a unit.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import ecprune
from ecprune import Importances, LayerImportance, methods

from . import checkpoints
from .config import ExperimentConfig, arch_name, reduced_widths, weight_count
from .families import family
from .methods import masked_template, parse_label, prune_copy
from .stacked import StackedMLP, mlp
from .store import CsvStore, format_ratio, row_key
from .training import TrainSettings, evaluate, gradient_pass_seconds, train

# Fine-tuning draws its batch order from its own stream, not a replay of the dense training's.
FINETUNE_STREAM = 10_000
FULLY_CONNECTED = "fully-connected"


@dataclass(frozen=True)
class Split:
    """Training and test tensors of one experiment variant, on the compute device.

    ``y_test_clean``: the test targets without the noise added to the data, for data that
    have them (diffusion-sorption); each cell's loss against them is ``test_loss_clean``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    y_test_clean: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> Split:
        clean = None if self.y_test_clean is None else self.y_test_clean.to(device)
        return Split(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test,
                                               self.y_test)), clean)


@dataclass(frozen=True)
class Job:
    """One (variant, architecture, seed) of an experiment."""

    variant: str
    widths: tuple[int, ...]
    seed: int

    @property
    def slug(self) -> str:
        variant = f"{self.variant}-" if self.variant else ""
        return f"{variant}{arch_name(self.widths)}-seed{self.seed}"


def job_cells(config: ExperimentConfig) -> list[tuple[str, float, str]]:
    """``(method, ratio, phase)`` of every result row of one job (a configuration with its own
    protocol lists them with its ``job_cells()``, e.g. :mod:`.neurons`)."""
    custom = getattr(config, "job_cells", None)
    if custom is not None:
        return custom()
    cells = [("dense", 0.0, "dense")]
    phases = ("prune", "finetune") if config.finetune else ("prune",)
    cells += [(m, r, p) for p in phases for m in config.methods for r in config.ratios]
    if config.fully_connected:
        cells += [(FULLY_CONNECTED, r, "finetune") for r in config.ratios]
    return cells


def cell_key(config: ExperimentConfig, job: Job, method: str, ratio: float,
             phase: str) -> tuple[str, ...]:
    """The results-CSV key of one cell of ``job``."""
    return row_key({"experiment": config.name, "variant": job.variant,
                    "arch": family(config).name(job.widths), "seed": job.seed, "method": method,
                    "ratio": ratio, "phase": phase})


def _save_importances(scores: Importances, path: Path) -> None:
    checkpoints.save({"method": scores.method, "seconds": scores.seconds,
                      "mean_output_sq": scores.mean_output_sq,
                      "layers": {name: (li.score, li.bias_shift)
                                 for name, li in scores.items()}}, path)


def _importances(state: dict) -> Importances:
    layers = {name: LayerImportance(score, shift) for name, (score, shift)
              in state["layers"].items()}
    return Importances(layers, method=state["method"], seconds=state["seconds"],
                       mean_output_sq=state["mean_output_sq"])


def train_settings(config: ExperimentConfig, epochs: int, seed: int) -> TrainSettings:
    """The experiment's optimiser settings for ``epochs`` epochs, batch order from ``seed``."""
    return TrainSettings(epochs=epochs, batch_size=config.batch_size, loss=config.loss,
                         seed=seed, lr=config.lr, lr_decay=config.lr_decay)


def train_dense(config: ExperimentConfig, job: Job, split: Split, *,
                checkpoint: Path | None = None) -> tuple[torch.nn.Sequential, float]:
    """The dense network of ``job`` trained by the experiment's protocol, and the seconds."""
    models = family(config)
    model = models.build(job.widths, seed=job.seed).to(split.x_train.device)
    stacked = models.stack([model])
    seconds = train(stacked, split.x_train, split.y_train,
                    train_settings(config, config.epochs, job.seed), checkpoint=checkpoint)
    return stacked.network(0), seconds


class JobRunner:
    """Runs the units of one job that the results CSV lacks; see the module docstring.

    A configuration with its own protocol names its runner, a subclass, as the class attribute
    ``runner`` (e.g. :mod:`.neurons`); ``JobRunner(config, ...)`` then builds that one.
    """

    def __new__(cls, config: ExperimentConfig, *args, **kwargs):
        runner = getattr(config, "runner", None)
        return super().__new__(runner if cls is JobRunner and runner is not None else cls)

    def __init__(self, config: ExperimentConfig, job: Job, split: Split, *, results: CsvStore,
                 timings: CsvStore, checkpoints: Path, done: set[tuple[str, ...]],
                 on_rows: Callable[[list[dict]], None] | None = None):
        self.config, self.job, self.split = config, job, split
        self.results, self.timings, self.done = results, timings, done
        self.checkpoints = checkpoints / job.slug
        self.on_rows = on_rows
        self.device = split.x_train.device
        self.family = family(config)

    def row(self, method: str, ratio: float, phase: str, **values) -> dict:
        return {"experiment": self.config.name, "variant": self.job.variant,
                "arch": self.family.name(self.job.widths), "seed": self.job.seed,
                "method": method, "ratio": format_ratio(ratio), "phase": phase,
                "total": self.family.weight_count(self.job.widths), **values}

    def missing(self, method: str, ratio: float, phase: str) -> bool:
        return cell_key(self.config, self.job, method, ratio, phase) not in self.done

    def write(self, rows: list[dict]) -> None:
        self.results.append(rows)
        self.done.update(row_key(row) for row in rows)
        if self.on_rows is not None:
            self.on_rows(rows)

    def record_time(self, unit: str, networks: int, epochs: int, seconds: float) -> None:
        self.timings.append([{"experiment": self.config.name, "variant": self.job.variant,
                              "arch": self.family.name(self.job.widths), "seed": self.job.seed,
                              "unit": unit, "networks": networks, "epochs": epochs,
                              "seconds": f"{seconds:.6g}"}])

    def settings(self, epochs: int, stream: int = 0) -> TrainSettings:
        return train_settings(self.config, epochs, self.job.seed + stream)

    def prune_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training samples every method scores and updates on (the first
        ``config.prune_samples``; all without a limit)."""
        count = self.config.prune_samples
        return self.split.x_train[:count], self.split.y_train[:count]

    def evaluation_rows(self, model: torch.nn.Module, cells: list[tuple[str, float]], phase: str,
                        epochs: int, extras: list[dict] | None = None) -> list[dict]:
        split = self.split
        losses, accuracies = evaluate(model, split.x_test, split.y_test, self.config.loss)
        clean = None if split.y_test_clean is None else evaluate(
            model, split.x_test, split.y_test_clean, self.config.loss)[0]
        kept = [int(sum(m[k].sum() for m in model.masks())) for k in range(model.count)]
        return [self.row(method, ratio, phase, kept=kept[k], epochs=epochs,
                         test_loss=f"{losses[k].item():.8g}",
                         test_loss_clean="" if clean is None else f"{clean[k].item():.8g}",
                         test_accuracy="" if accuracies is None
                         else f"{accuracies[k].item():.6g}", **(extras[k] if extras else {}))
                for k, (method, ratio) in enumerate(cells)]

    def dense_if_needed(self) -> torch.nn.Module | None:
        """The dense network when a cell other than the narrow baseline's is missing (and the
        time of one gradient pass, the cost unit, when a prune cell is), else None."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        cells = job_cells(self.config)
        if not any(self.missing(*cell) for cell in cells if cell[0] != FULLY_CONNECTED):
            return None
        dense = self.dense()
        if any(self.missing(*cell) for cell in cells if cell[2] == "prune"):
            self.record_time("gradient-pass", 1, 0, gradient_pass_seconds(
                dense, *self.prune_data(), self.config.loss))
        return dense

    def run(self) -> None:
        """Run every missing unit of the job, then drop its checkpoints."""
        dense = self.dense_if_needed()
        if dense is not None:
            pruned = {label: self.prune_only(dense, label) for label in self.config.methods}
            if self.config.finetune:
                self.finetune(pruned)
        if self.config.fully_connected:
            self.fully_connected()
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    def dense(self) -> torch.nn.Sequential:
        """The trained dense network (from its checkpoint when there is one); writes its row."""
        path = self.checkpoints / "dense.pt"
        model = checkpoints.load(path, self._dense_from, map_location=self.device)
        if model is None:
            model, seconds = train_dense(self.config, self.job, self.split,
                                         checkpoint=self.checkpoints / "dense-training.pt")
            self.record_time("train-dense", 1, self.config.epochs, seconds)
            checkpoints.save(model.state_dict(), path)
        if self.missing("dense", 0.0, "dense"):
            self.write(self.evaluation_rows(self.family.stack([model]), [("dense", 0.0)],
                                            "dense", self.config.epochs))
        return model

    def _dense_from(self, state: dict) -> torch.nn.Sequential:
        model = self.family.build(self.job.widths, seed=self.job.seed).to(self.device)
        model.load_state_dict(state)
        return model

    def importances(self, dense: torch.nn.Sequential, method: str) -> Importances:
        """Scores of ``method`` on the training set (from the checkpoint when there is one)."""
        path = self.checkpoints / f"scores-{method}.pt"
        scores = checkpoints.load(path, _importances, map_location=self.device)
        if scores is not None:
            return scores
        data = TensorDataset(*self.prune_data())
        shared = {"loss": self.config.loss, "nonlinear_samples": self.config.nonlinear_samples}
        scores = ecprune.importance(dense, data, method, seed=self.job.seed, progress=False,
                                    **methods.applicable(method, shared))
        self.record_time(f"score-{method}", 1, 0, scores.seconds)
        _save_importances(scores, path)
        return scores

    def pruned(self, dense: torch.nn.Sequential, scores: Importances,
               ratio: float) -> torch.nn.Sequential:
        """A copy of ``dense`` pruned to ``ratio`` from precomputed ``scores``."""
        model = copy.deepcopy(dense)
        ecprune.prune_by_importance(model, scores, ratio)
        return model

    def prune_only(self, dense: torch.nn.Sequential, label: str) -> Pruned:
        """Prune with method ``label`` at every ratio lacking a "prune" row and write them."""
        pruned = Pruned(self, dense, label)
        ratios = [r for r in self.config.ratios if self.missing(label, r, "prune")]
        if ratios:
            start = time.perf_counter()
            models, extras = pruned.stack(ratios)
            self.write(self.evaluation_rows(models, [(label, r) for r in ratios], "prune",
                                            self.config.epochs, extras))
            self.record_time(f"prune-evaluate-{label}", len(ratios), 0,
                             time.perf_counter() - start)
        return pruned

    def finetune(self, pruned: dict[str, Pruned]) -> None:
        """Fine-tune every pruned network lacking a "finetune" row, all at once."""
        cells = [(m, r) for m in self.config.methods for r in self.config.ratios
                 if self.missing(m, r, "finetune")]
        if not cells:
            return
        models = [pruned[m].get(r) for m, r in cells]
        stacked = StackedMLP.from_models([model for model, _ in models])
        epochs = self.config.finetune_epochs
        seconds = train(stacked, self.split.x_train, self.split.y_train,
                        self.settings(epochs, FINETUNE_STREAM),
                        checkpoint=self.checkpoints / f"finetune-{_digest(cells)}.pt")
        self.record_time("finetune", len(cells), epochs, seconds)
        self.write(self.evaluation_rows(stacked, cells, "finetune", self.config.epochs + epochs,
                                        [_cost(seconds) for _, seconds in models]))

    def fully_connected(self) -> None:
        """Train the width-reduced dense baselines lacking a row, all at once."""
        ratios = [r for r in self.config.ratios if self.missing(FULLY_CONNECTED, r, "finetune")]
        if not ratios:
            return
        total = weight_count(self.job.widths)
        models = [mlp(reduced_widths(self.job.widths, round((1 - r) * total)),
                      seed=self.job.seed).to(self.device) for r in ratios]
        stacked = StackedMLP.from_models(models)
        epochs = self.config.baseline_epochs
        cells = [(FULLY_CONNECTED, r) for r in ratios]
        seconds = train(stacked, self.split.x_train, self.split.y_train, self.settings(epochs),
                        checkpoint=self.checkpoints / f"fully-connected-{_digest(cells)}.pt")
        self.record_time(FULLY_CONNECTED, len(ratios), epochs, seconds)
        self.write(self.evaluation_rows(stacked, cells, "finetune", epochs))


def _digest(cells: list[tuple[str, float]]) -> str:
    """Names a training checkpoint by the networks it holds, so a changed grid never loads it."""
    return hashlib.sha1(repr(cells).encode()).hexdigest()[:10]


def _cost(seconds: float) -> dict:
    return {"score_seconds": f"{seconds:.4f}"}


class Pruned:
    """Copies of one job's dense network pruned by one method label, with the seconds each
    cost: from one set of scores (:meth:`JobRunner.importances`) for the paper's methods, else
    by :func:`~ecprune.experiments.methods.prune_copy` per ratio, kept as a checkpoint."""

    def __init__(self, runner: JobRunner, dense: torch.nn.Sequential, label: str):
        self.runner, self.dense, self.label = runner, dense, label
        self.spec = parse_label(label)
        self.scores = runner.importances(dense, self.spec.method) if self.spec.scores_once \
            else None

    def get(self, ratio: float) -> tuple[torch.nn.Sequential, float]:
        """The network pruned to ``ratio`` and the seconds its pruning took."""
        if self.scores is not None:
            return self.runner.pruned(self.dense, self.scores, ratio), self.scores.seconds
        path = self.runner.checkpoints / f"pruned-{self.label}-{format_ratio(ratio)}.pt"
        saved = checkpoints.load(path, self._pruned_from, map_location=self.runner.device)
        if saved is not None:
            return saved
        config = self.runner.config
        model, seconds = prune_copy(self.dense, TensorDataset(*self.runner.prune_data()),
                                    ratio, self.spec, seed=self.runner.job.seed,
                                    loss=config.loss, nonlinear_samples=config.nonlinear_samples)
        self.runner.record_time(f"prune-{self.label}-{format_ratio(ratio)}", 1, 0, seconds)
        checkpoints.save({"model": model.state_dict(), "seconds": seconds}, path)
        return model, seconds

    def _pruned_from(self, state: dict) -> tuple[torch.nn.Sequential, float]:
        model = masked_template(copy.deepcopy(self.dense))
        model.load_state_dict(state["model"])
        return model, float(state["seconds"])

    def stack(self, ratios: list[float]) -> tuple[torch.nn.Module, list[dict]]:
        """The pruned networks at ``ratios`` stacked, and their cost columns."""
        models = [self.get(r) for r in ratios]
        return (self.runner.family.stack([model for model, _ in models]),
                [_cost(seconds) for _, seconds in models])
