"""Settings of the paper's experiments as frozen dataclasses, and the width-reduced baseline."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from .methods import check_labels

# The paper's five baselines and ECP, plus the two ablations (score vs compensation).
PAPER_METHODS = ("ecp", "nonlinear", "magnitude", "gradient", "random", "ecp-nocomp",
                 "magnitude-comp")
PAPER_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
PAPER_SEEDS = (0, 1, 2, 3, 4)
LOSSES = ("cross_entropy", "mse")
# Model families (:mod:`.families`): fully-connected PReLU networks, and MLP-Mixers.
MODELS = ("mlp", "mixer")


def arch_name(widths: Sequence[int]) -> str:
    """``(784, 32, 32, 10)`` -> ``"784-32-32-10"``."""
    return "-".join(str(w) for w in widths)


def weight_count(widths: Sequence[int]) -> int:
    """Number of weights (biases and PReLU slopes excluded) of a fully-connected network."""
    return sum(a * b for a, b in itertools.pairwise(widths))


def reduced_widths(widths: Sequence[int], target: int) -> tuple[int, ...]:
    """Hidden widths shrunk uniformly (by one factor, rounded) to the weight count closest to
    ``target``; input and output widths are kept.

    >>> reduced_widths((784, 64, 64, 10), 27456)
    (784, 33, 33, 10)
    """
    inner = widths[1:-1]
    best: tuple[int, ...] = tuple(widths)
    for first in range(1, inner[0] + 1):
        factor = first / inner[0]
        hidden = tuple(max(1, round(factor * w)) for w in inner)
        candidate = (widths[0], *hidden, widths[-1])
        if abs(weight_count(candidate) - target) < abs(weight_count(best) - target):
            best = candidate
    return best


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment's grid and training protocol.

    Every (variant, architecture, seed) is a job: train the dense network for ``epochs``, score
    it once per method, prune it at every ratio, fine-tune each pruned network for
    ``finetune_epochs`` with its mask frozen, and train the width-reduced dense baselines
    ("fully-connected") for ``epochs + finetune_epochs`` from scratch. Every training run
    uses Adam at learning rate ``lr`` decayed geometrically to ``lr * lr_decay`` over its
    epochs (:class:`~ecprune.experiments.training.TrainSettings`; 1.0: constant). ``methods``
    are labels (:func:`~ecprune.experiments.methods.parse_label`: e.g. ``"ecp-steps10"``);
    ``finetune=False`` stops after pruning (prune-only grids). ``model`` names the family of
    the ``architectures`` (:data:`MODELS`; fine-tuning and the width-reduced baseline exist for
    ``"mlp"`` only); ``prune_samples`` limits the data every method scores and updates on to
    the first that many training samples (None: all of them).
    """

    name: str
    architectures: tuple[tuple[int, ...], ...]
    methods: tuple[str, ...] = PAPER_METHODS
    ratios: tuple[float, ...] = PAPER_RATIOS
    seeds: tuple[int, ...] = PAPER_SEEDS
    variants: tuple[str, ...] = ("",)
    epochs: int = 15
    finetune_epochs: int = 15
    batch_size: int = 128
    loss: str = "cross_entropy"
    nonlinear_samples: int = 1024
    fully_connected: bool = True
    lr: float = 1e-3
    lr_decay: float = 1.0
    finetune: bool = True
    model: str = "mlp"
    prune_samples: int | None = None

    def __post_init__(self):
        check_labels(self.methods)
        if self.model not in MODELS:
            raise ValueError(f"Unknown model {self.model!r}; expected one of {MODELS}.")
        if self.model != "mlp" and (self.finetune or self.fully_connected):
            raise ValueError(f"model={self.model!r} runs prune-only grids: pass finetune=False "
                             "and fully_connected=False.")
        if self.prune_samples is not None and self.prune_samples < 1:
            raise ValueError(f"prune_samples must be a positive integer or None; got "
                             f"{self.prune_samples}.")
        if not all(0 < r < 1 for r in self.ratios):
            raise ValueError(f"Ratios must lie in (0, 1); got {self.ratios}.")
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}; expected one of {LOSSES}.")
        for field in ("epochs", "finetune_epochs", "batch_size", "nonlinear_samples"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be a positive integer; got "
                                 f"{getattr(self, field)}.")
        if not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr must be positive and lr_decay in (0, 1]; got {self.lr} and "
                             f"{self.lr_decay}.")
        if not self.seeds or not self.architectures:
            raise ValueError("An experiment needs at least one seed and one architecture.")

    @property
    def baseline_epochs(self) -> int:
        """Training epochs of the width-reduced dense baseline: the same budget."""
        return self.epochs + self.finetune_epochs
