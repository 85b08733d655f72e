"""How many epochs does the diffusion-sorption protocol need? Dense test loss against the budget.

For every architecture of the experiment, noise level and seed, the dense network is trained
exactly as a job of ``ecprune reproduce diffsorp`` trains it (:func:`~.job.train_dense`: the
same initialisation, batch order and Adam, the learning rate decayed geometrically from ``lr``
to ``lr * lr_decay`` over *its own* epochs), once per budget of epochs, and evaluated on the
test set against the noisy targets (``test_loss``) and the clean solver values
(``test_loss_clean``). One row per (architecture, noise, seed, epochs) goes to
``OUT/<name>.csv`` as each network finishes; training checkpoints every epoch, so a killed run
loses at most one epoch, and a rerun skips the finished rows.

The rule (:func:`converged_budget`): the smallest budget E whose mean loss over the seeds
changes by less than ``tolerance`` (5 %) from E to 2E. Beside it, :func:`saturated_budget`:
the smallest E from which doubling no longer *lowers* the mean loss by ``tolerance`` or more
(with noisy targets the test loss can rise with more epochs, the network fitting the noise;
the literal rule then fails although more training does not help).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import remove_partials
from ..data.diffsorp import NOISE_LEVELS
from .config import ExperimentConfig, arch_name
from .diffsorp import DIFFSORP, load_diffsorp_split, noise_variant, variant_noise
from .families import family
from .folder import data_digest
from .job import Job, Split, train_dense, train_settings
from .store import CsvStore, format_ratio
from .training import evaluate

FIELDS = ("arch", "noise", "seed", "epochs", "batch_size", "lr", "lr_decay", "train_loss",
          "test_loss", "test_loss_clean", "seconds")
KEY = ("arch", "noise", "seed", "epochs")
# The training settings a row was computed with: a folder holds rows of one setting only.
SETTINGS = ("batch_size", "lr", "lr_decay")
METRICS = ("test_loss", "test_loss_clean")


@dataclass(frozen=True)
class Study:
    """The budgets, seeds and noise levels of a convergence study of ``config``'s networks."""

    name: str = "diffsorp-convergence"
    config: ExperimentConfig = DIFFSORP
    budgets: tuple[int, ...] = (30, 60, 120, 240, 480)
    seeds: tuple[int, ...] = (0, 1, 2)
    noise: tuple[float, ...] = NOISE_LEVELS
    tolerance: float = 0.05

    def __post_init__(self):
        if not self.budgets or any(e < 1 for e in self.budgets):
            raise ValueError(f"Budgets must be positive numbers of epochs; got {self.budgets}.")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"Seeds must be non-negative integers; got {self.seeds}.")
        if not self.noise or any(d < 0 for d in self.noise):
            raise ValueError(f"Noise levels must be non-negative; got {self.noise}.")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must lie in (0, 1); got {self.tolerance}.")

    @property
    def architectures(self) -> tuple[tuple[int, ...], ...]:
        return self.config.architectures

    def plan(self) -> list[tuple[str, float, int, int]]:
        """``(arch name, noise, seed, epochs)`` of every network, budget-major: every network
        of the smallest budget first, so a stopped study holds whole budgets."""
        return [(arch_name(widths), d, seed, epochs) for epochs in sorted(set(self.budgets))
                for seed in self.seeds for d in self.noise for widths in self.architectures]


STUDY = Study()
# Both architectures, one seed, noise 0, budgets 1 and 2: the whole pipeline in seconds.
STUDY_QUICK = Study(name="diffsorp-convergence-quick", budgets=(1, 2), seeds=(0,), noise=(0.0,))


def row_key(row: dict) -> tuple[str, ...]:
    """The identity of a row, as the CSV writes it."""
    return (str(row["arch"]), format_ratio(row["noise"]), str(int(row["seed"])),
            str(int(row["epochs"])))


def _settings(config: ExperimentConfig) -> dict[str, str]:
    return {"batch_size": str(config.batch_size), "lr": format_ratio(config.lr),
            "lr_decay": format_ratio(config.lr_decay)}


def check_settings(rows: Iterable[dict[str, str]], config: ExperimentConfig, path: Path) -> None:
    """ValueError when a stored row was trained with other settings than ``config``'s."""
    expected = _settings(config)
    for line, row in enumerate(rows, 2):
        stored = {name: row[name] for name in SETTINGS}
        if stored != expected:
            raise ValueError(f"{path}, line {line}: trained with {stored}, this study trains "
                             f"with {expected}; write to another --out.")


@dataclass(frozen=True)
class StudyReport:
    """Where the rows went and how many of the study's networks this run trained."""

    results: Path
    networks: int
    computed: int
    seconds: float


def run_study(study: Study, *, out: str | Path, data_dir: str | Path | None = None,
              on_row: Callable[[dict], None] | None = None) -> StudyReport:
    """Train and evaluate every network of ``study`` missing from ``OUT/<name>.csv``;
    ``on_row(row)`` after each one."""
    start = time.perf_counter()
    out = Path(out)
    store = CsvStore(out / f"{study.name}.csv", FIELDS)
    rows = store.rows()
    check_settings(rows, study.config, store.path)
    done = {row_key(row) for row in rows}
    todo = [item for item in study.plan() if row_key(dict(zip(KEY, item, strict=True)))
            not in done]
    widths = {arch_name(w): w for w in study.architectures}
    splits: dict[float, Split] = {}
    checkpoints = out / "checkpoints" / study.name
    for arch, noise, seed, epochs in todo:
        if noise not in splits:
            splits[noise] = load_diffsorp_split(noise_variant(noise), data_dir=data_dir)
        row = train_and_evaluate(study.config, Job(noise_variant(noise), widths[arch], seed),
                                 splits[noise], epochs, checkpoints=checkpoints)
        store.append([row])
        if on_row is not None:
            on_row(row)
    for folder in (checkpoints, checkpoints.parent):
        with contextlib.suppress(OSError):  # absent, or holds another process's networks
            folder.rmdir()
    return StudyReport(store.path, len(study.plan()), len(todo), time.perf_counter() - start)


def train_and_evaluate(config: ExperimentConfig, job: Job, split: Split, epochs: int, *,
                       checkpoints: Path) -> dict:
    """The row of ``job``'s dense network trained for ``epochs`` by ``config``'s protocol."""
    config = replace(config, epochs=epochs)
    settings = train_settings(config, epochs, job.seed)
    digest = hashlib.sha1(f"{settings!r}{data_digest(split)}".encode()).hexdigest()[:10]
    # A folder per network: another process of the study (other seeds) never removes it.
    folder = checkpoints / f"{job.slug}-e{epochs}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    remove_partials(folder)  # a write that a kill interrupted
    model, seconds = train_dense(config, job, split, checkpoint=folder / "dense-training.pt")
    folder.rmdir()
    stacked = family(config).stack([model])

    def loss(x: torch.Tensor, y: torch.Tensor | None) -> str:
        return "" if y is None else f"{evaluate(stacked, x, y, config.loss)[0][0].item():.8g}"

    return {"arch": arch_name(job.widths), "noise": format_ratio(variant_noise(job.variant)),
            "seed": job.seed, "epochs": epochs, **_settings(config),
            "train_loss": loss(split.x_train, split.y_train),
            "test_loss": loss(split.x_test, split.y_test),
            "test_loss_clean": loss(split.x_test, split.y_test_clean),
            "seconds": f"{seconds:.4g}"}


def converged_budget(means: dict[int, float], tolerance: float = 0.05) -> int | None:
    """The smallest budget ``E`` of ``means`` (budget -> mean loss) whose loss changes by less
    than ``tolerance`` (relative to the loss at ``E``) from ``E`` to ``2E``; None when no
    doubling in ``means`` does.

    >>> converged_budget({30: 1.0, 60: 0.5, 120: 0.48, 240: 0.47})
    60
    >>> converged_budget({30: 1.0, 60: 0.5, 100: 0.49}) is None  # 100 is no doubling of 60
    True
    """
    return _first_budget(means, lambda loss, doubled: abs(doubled - loss) < tolerance * abs(loss))


def saturated_budget(means: dict[int, float], tolerance: float = 0.05) -> int | None:
    """The smallest budget ``E`` of ``means`` from which doubling lowers the loss by less than
    ``tolerance`` (relative to the loss at ``E``), or raises it; None when every doubling in
    ``means`` lowers it by more.

    >>> saturated_budget({30: 1.0, 60: 0.5, 120: 0.6})
    60
    >>> saturated_budget({30: 1.0, 60: 0.5, 120: 0.3}) is None
    True
    """
    return _first_budget(means, lambda loss, doubled: doubled > (1 - tolerance) * loss)


def _first_budget(means: dict[int, float], settled: Callable[[float, float], bool]) -> int | None:
    """The smallest ``E`` of ``means`` with ``2E`` in it and ``settled(means[E], means[2E])``."""
    return next((epochs for epochs in sorted(means)
                 if 2 * epochs in means and settled(means[epochs], means[2 * epochs])), None)


@dataclass(frozen=True)
class Convergence:
    """One architecture and noise level: mean loss over seeds per budget, the rule's E and the
    E from which doubling stops paying (:func:`saturated_budget`)."""

    arch: str
    noise: float
    metric: str
    means: dict[int, float]
    budget: int | None
    saturated: int | None = None

    def changes(self) -> dict[int, float]:
        """Relative change of the mean loss from ``E`` to ``2E``, per ``E``."""
        return {e: self.means[2 * e] / self.means[e] - 1 for e in sorted(self.means)
                if 2 * e in self.means}


def loss_table(rows: Iterable[dict[str, str]], metric: str, *,
               seeds: Sequence[int] | None = None) -> dict[tuple[str, float], dict[int, list]]:
    """``(arch, noise) -> epochs -> [loss of each seed]``, rows without ``metric`` left out
    (and, with ``seeds``, budgets that lack one of them)."""
    table: dict[tuple[str, float], dict[int, dict[int, float]]] = defaultdict(
        lambda: defaultdict(dict))
    for row in rows:
        if row.get(metric, "") != "":
            table[(row["arch"], float(row["noise"]))][int(row["epochs"])][int(row["seed"])] = \
                float(row[metric])
    wanted = None if seeds is None else set(seeds)
    return {key: {e: [by_seed[s] for s in sorted(by_seed)] for e, by_seed in sorted(b.items())
                  if wanted is None or wanted <= set(by_seed)}
            for key, b in table.items()}


def summarise(rows: list[dict[str, str]], study: Study,
              metric: str = "test_loss") -> list[Convergence]:
    """The rule applied to the rows of ``study``'s plan (its seeds complete per budget)."""
    planned = {row_key(dict(zip(KEY, item, strict=True))) for item in study.plan()}
    mine = [row for row in rows if row_key(row) in planned]
    found = []
    for (arch, noise), by_budget in loss_table(mine, metric, seeds=study.seeds).items():
        means = {e: float(np.mean(values)) for e, values in by_budget.items()}
        found.append(Convergence(arch, noise, metric, means,
                                 converged_budget(means, study.tolerance),
                                 saturated_budget(means, study.tolerance)))
    return found


def convergence_table(study: Study, rows: list[dict[str, str]]) -> str:
    """Per architecture and noise level, for both losses: the rule's E, the E from which
    doubling stops paying, and the change of the mean loss at every doubling."""
    tolerance = f"{study.tolerance:.0%}"
    lines = [f"Means over seeds {list(study.seeds)}, budgets {sorted(set(study.budgets))}. "
             f"E: the smallest budget whose mean loss changes by less than {tolerance} from E "
             f"to 2E (the rule); E+: the smallest from which doubling lowers it by less than "
             f"{tolerance} or raises it.",
             "", "| architecture | noise d | E, test loss | E+, test loss | E, clean | E+, clean "
             "| test loss change per doubling | clean test loss change per doubling |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    clean = {(c.arch, c.noise): c for c in summarise(rows, study, "test_loss_clean")}
    for noisy in summarise(rows, study, "test_loss"):
        other = clean.get((noisy.arch, noisy.noise))
        cells = [_budget(noisy, "budget"), _budget(noisy, "saturated"), _budget(other, "budget"),
                 _budget(other, "saturated"), _changes(noisy), _changes(other)]
        lines.append(f"| {noisy.arch} | {noisy.noise:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _budget(found: Convergence | None, which: str) -> str:
    if found is None:
        return "-"
    value = getattr(found, which)
    return "none reached" if value is None else str(value)


def _changes(found: Convergence | None) -> str:
    if found is None:
        return "-"
    return ", ".join(f"{e}->{2 * e}: {c:+.1%}" for e, c in found.changes().items()) or "-"


def figure(study: Study, rows: list[dict[str, str]], path: str | Path) -> Path:
    """Test loss against the budget, log-log (:func:`ecprune.plots.convergence_figure`), from
    the rows of ``study``'s plan."""
    from ..plots import convergence_figure

    planned = {row_key(dict(zip(KEY, item, strict=True))) for item in study.plan()}
    mine = [row for row in rows if row_key(row) in planned]
    tables = {metric: loss_table(mine, metric) for metric in METRICS}
    return convergence_figure({m: t for m, t in tables.items() if t},
                              [arch_name(w) for w in study.architectures], path)
