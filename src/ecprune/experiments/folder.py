"""What a results folder's numbers depend on, stored next to them in ``OUT/<name>-config.json``.

A cell of ``OUT/<name>.csv`` is its row key (experiment, variant, arch, seed, method, ratio,
phase) within the folder's configuration: the version of the experiment protocol
(:data:`PROTOCOL_VERSION`), the training and pruning settings (epochs, fine-tuning epochs, batch
size, loss, learning rate and decay, the non-linear baseline's samples), every method label's
full configuration (its options and their defaults) and a SHA-256 of each variant's data, with a
:func:`data_sketch` of it. The
grid (architectures, seeds, ratios, methods, variants) is not part of it: a run may add seeds,
ratios, methods or variants to a folder, and the file then records the new labels and data too.

A run whose configuration differs from its folder's is refused with :class:`ConfigMismatch`,
unless it starts anew (``new=True``, ``ecprune reproduce --new``). Data whose SHA-256 differs
but whose sketch agrees to :data:`SKETCH_RTOL` (the PDE solver's last bits on another CPU) are
the folder's data, with a warning: the folder keeps its own digest and sketch. Starting anew,
:func:`set_aside` first moves the experiment's files to ``OUT/replaced/<name>-<time>/``. A
CSV without a configuration file (written before there was one, e.g. ``docs/results``) adopts
the run's configuration, with a notice, once its ``epochs`` column agrees with the run's.
Checkpoints of unfinished jobs live in ``OUT/checkpoints/<name>/<key>/``, ``key`` a digest of
the configuration and the variant's data (:meth:`FolderConfig.job_key`), so no run ever loads
another configuration's checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..atomic import write_text
from ..methods.registry import REGISTRY
from ..structured.registry import NEURON_METHODS
from .config import ExperimentConfig
from .job import Split
from .methods import parse_label

# Bump when a change to the experiment code (job.py, training.py, stacked.py) changes what
# numbers a cell gets: every folder written before is then refused rather than extended.
PROTOCOL_VERSION = 1
SETTINGS = ("epochs", "finetune_epochs", "batch_size", "loss", "lr", "lr_decay",
            "nonlinear_samples")
# Data that differ from a folder's by float32 rounding move every sketch number by ~1e-7 of its
# scale at most; a change of 1e-5 in a noise level or any other split already moves it by more.
SKETCH_RTOL = 1e-6
LOG = logging.getLogger("ecprune.experiments")


class ConfigMismatch(ValueError):
    """The results folder holds results of another configuration."""


def config_path(out: Path, name: str) -> Path:
    """``OUT/<name>-config.json``."""
    return out / f"{name}-config.json"


def data_digest(split: Split) -> str:
    """SHA-256 of the dtype, shape and bytes of the four tensors of ``split``."""
    digest = hashlib.sha256()
    for tensor in (split.x_train, split.y_train, split.x_test, split.y_test):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


def data_sketch(split: Split) -> list[float]:
    """Per tensor of ``split`` (as :func:`data_digest`): its size, sum, sum of squares and
    projection on a fixed N(0, 1) vector, in float64; :func:`sketches_agree` compares two."""
    sketch = []
    generator = torch.Generator().manual_seed(0)
    for tensor in (split.x_train, split.y_train, split.x_test, split.y_test):
        values = tensor.detach().cpu().reshape(-1).double()
        direction = torch.randn(values.numel(), generator=generator, dtype=torch.float64)
        sketch += [float(values.numel()), values.sum().item(), values.square().sum().item(),
                   (values @ direction).item()]
    return sketch


def sketches_agree(a: list[float], b: list[float], rtol: float = SKETCH_RTOL) -> bool:
    """Whether two :func:`data_sketch` results are the same data up to ``rtol`` of each
    number's scale (the sum's and projection's scale: ``sqrt(size * sum of squares)``)."""
    if len(a) != len(b):
        return False
    for k in range(0, len(a), 4):
        (n, s1, s2, p), (m, t1, t2, q) = a[k:k + 4], b[k:k + 4]
        scale = (n * max(s2, t2)) ** 0.5
        if n != m or abs(s2 - t2) > rtol * max(s2, t2) or max(abs(s1 - t1),
                                                              abs(p - q)) > rtol * scale:
            return False
    return True


def _method_configs(config: ExperimentConfig) -> dict[str, str]:
    shared = {"loss": config.loss, "nonlinear_samples": config.nonlinear_samples}
    return {label: f"{spec.pruner(**shared)!r}, steps={spec.steps}"
            for label, spec in ((label, parse_label(label)) for label in config.methods)}


def without_new_defaults(stored: str, current: str) -> str:
    """``current`` (a method's repr) without the ``field=default`` items of fields that
    ``stored`` does not name: options added to the method since the folder was written, at the
    defaults that keep its earlier behaviour, do not stop a resume.

    >>> without_new_defaults("ECP(sensitivity='auto'), steps=1",
    ...                      "ECP(sensitivity='auto', probes=None), steps=1")
    "ECP(sensitivity='auto'), steps=1"
    """
    name = current.split("(", 1)[0]
    classes = {cls.__name__: cls for cls in (*REGISTRY.values(), *NEURON_METHODS.values())}
    if name not in classes or not dataclasses.is_dataclass(classes[name]):
        return current
    for item in dataclasses.fields(classes[name]):
        if f"{item.name}=" in stored or item.default is dataclasses.MISSING:
            continue
        pair = f"{item.name}={item.default!r}"
        current = (current.replace(f", {pair}", "").replace(f"({pair}, ", "(")
                   .replace(f"({pair})", "()"))
    return current


@dataclass(frozen=True)
class FolderConfig:
    """The content of ``OUT/<name>-config.json``: see the module docstring."""

    experiment: str
    protocol: int
    settings: dict[str, object]
    methods: dict[str, str]
    data: dict[str, str] = field(default_factory=dict)
    sketches: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, config: ExperimentConfig, data: dict[str, str] | None = None,
           sketches: dict[str, list[float]] | None = None) -> FolderConfig:
        """The configuration of a run of ``config`` (``data``: variant -> :func:`data_digest`,
        ``sketches``: variant -> :func:`data_sketch`)."""
        settings = {name: getattr(config, name) for name in SETTINGS}
        if config.prune_samples is not None:  # recorded only where set: older folders agree
            settings["prune_samples"] = config.prune_samples
        settings = json.loads(json.dumps(settings))
        return cls(config.name, PROTOCOL_VERSION, settings, _method_configs(config),
                   dict(data or {}), dict(sketches or {}))

    @classmethod
    def read(cls, path: Path) -> FolderConfig | None:
        """The stored configuration; None when there is no file."""
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} is not a configuration file written by ecprune ({err}); "
                             "move it away, or pass --new to start anew.") from None

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")

    def differences(self, other: FolderConfig) -> list[str]:
        """``"what: <self's> there, <other's> here"`` for everything that disagrees; labels and
        variants count only where both have them."""
        pairs = [("experiment", self.experiment, other.experiment),
                 ("protocol version", self.protocol, other.protocol)]
        pairs += [(name, self.settings.get(name), other.settings.get(name))
                  for name in sorted(set(self.settings) | set(other.settings))]
        pairs += [(f"method {label!r}", self.methods[label],
                   without_new_defaults(self.methods[label], other.methods[label]))
                  for label in self.methods.keys() & other.methods.keys()]
        rounded = set(self.rounded(other))
        pairs += [(f"data of variant {variant!r}", self.data[variant], other.data[variant])
                  for variant in self.data.keys() & other.data.keys() if variant not in rounded]
        return [f"{what}: {mine} there, {theirs} here" for what, mine, theirs in pairs
                if mine != theirs]

    def changed_data(self, other: FolderConfig) -> list[str]:
        """Variants of both whose data digests differ."""
        return sorted(v for v in self.data.keys() & other.data.keys()
                      if self.data[v] != other.data[v])

    def rounded(self, other: FolderConfig) -> list[str]:
        """Variants whose data digests differ but whose sketches agree."""
        return [v for v in self.changed_data(other) if v in self.sketches and v in other.sketches
                and sketches_agree(self.sketches[v], other.sketches[v])]

    def merged(self, other: FolderConfig) -> FolderConfig:
        """This configuration with ``other``'s method labels, variants and sketches added (its
        own digests and sketches kept)."""
        return replace(self, methods={**self.methods, **other.methods},
                       data={**other.data, **self.data},
                       sketches={**other.sketches, **self.sketches})

    def job_key(self, variant: str) -> str:
        """Digest naming the checkpoints of a job of ``variant`` under this configuration."""
        identity = {**asdict(self), "data": self.data[variant]}
        del identity["sketches"]  # keys of checkpoints written before there were sketches hold
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _expected_epochs(config: ExperimentConfig, phase: str) -> int:
    # Fine-tuned networks and the width-reduced baselines both train epochs + finetune_epochs.
    return config.baseline_epochs if phase == "finetune" else config.epochs


def check_rows(config: ExperimentConfig, rows: list[dict[str, str]], csv_path: Path) -> None:
    """ConfigMismatch when a row's experiment or ``epochs`` column disagrees with ``config``."""
    for line, row in enumerate(rows, 2):
        expected = (config.name, str(_expected_epochs(config, row["phase"])))
        if (row["experiment"], row["epochs"]) != expected:
            raise ConfigMismatch(
                f"{csv_path} holds results of another configuration: line {line} "
                f"({row['method']}, {row['phase']}) is experiment {row['experiment']!r} trained "
                f"for {row['epochs']} epochs, this run is {expected[0]!r} and trains "
                f"{expected[1]}. {_remedy(csv_path.parent)}")


def _remedy(out: Path) -> str:
    return ("Rerun with the folder's settings (with or without --quick, as before), write to "
            f"another --out, or pass --new to move the old results to {out / 'replaced'} and "
            "start anew.")


def check(stored: FolderConfig | None, current: FolderConfig, *, out: Path,
          rows: list[dict[str, str]], config: ExperimentConfig) -> None:
    """ConfigMismatch unless a run of ``current`` may extend the folder; see the module
    docstring. Without a stored configuration, existing ``rows`` must agree with ``config``."""
    csv_path = out / f"{config.name}.csv"
    if stored is None:
        check_rows(config, rows, csv_path)
        return
    differences = stored.differences(current)
    for variant in stored.rounded(current):
        LOG.warning("ecprune: the data of variant %r differ from %s's in their last bits only "
                    "(SHA-256 %s there, %s here; sketches agree to %g): resuming.", variant,
                    out, stored.data[variant], current.data[variant], SKETCH_RTOL)
    if differences:
        unsketched = [v for v in stored.changed_data(current) if v not in stored.sketches]
        note = (f" The folder records no data sketch of {', '.join(map(repr, unsketched))} "
                "(written before there were sketches), so data that another machine rounded "
                "differently cannot be told from other data: resume on the machine that wrote "
                "it, or start anew." if unsketched else "")
        raise ConfigMismatch(
            f"{csv_path} holds results of another configuration "
            f"({config_path(out, config.name)}): {'; '.join(differences)}.{note} "
            f"{_remedy(out)}")


def update(out: Path, stored: FolderConfig | None, current: FolderConfig, *,
           rows: list[dict[str, str]]) -> None:
    """Write the folder's configuration with this run's labels and variants added."""
    path = config_path(out, current.experiment)
    if stored is None and rows:
        LOG.warning("ecprune: %s has no %s; adopting this run's configuration for its %d rows "
                    "(their epochs agree with it).", out / f"{current.experiment}.csv",
                    path.name, len(rows))
    merged = current if stored is None else stored.merged(current)
    if merged != stored:
        merged.write(path)


def set_aside(out: Path, name: str) -> Path | None:
    """Move experiment ``name``'s results, timings, configuration and checkpoints to
    ``OUT/replaced/<name>-<UTC time>/``; returns that folder (None: nothing to move)."""
    found = [path for path in (out / f"{name}.csv", out / f"{name}-timings.csv",
                               config_path(out, name), out / "checkpoints" / name)
             if path.exists()]
    if not found:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out / "replaced" / f"{name}-{stamp}"
    suffix = 1
    while target.exists():
        target, suffix = out / "replaced" / f"{name}-{stamp}-{suffix}", suffix + 1
    target.mkdir(parents=True)
    for path in found:
        shutil.move(path, target / path.name)
    LOG.warning("ecprune: --new: moved the previous %s results to %s.", name, target)
    return target
