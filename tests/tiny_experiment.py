"""A tiny synthetic experiment shared by the runner tests and their subprocess driver."""

from __future__ import annotations

import torch

from ecprune.experiments.config import ExperimentConfig
from ecprune.experiments.job import Split
from ecprune.experiments.store import RESULT_FIELDS, read_rows

TINY = ExperimentConfig(
    name="tiny", architectures=((5, 6, 4, 3),), methods=("ecp", "magnitude", "gradient"),
    ratios=(0.5, 0.8), seeds=(0, 1), epochs=2, finetune_epochs=1, batch_size=16,
    nonlinear_samples=8,
)
# Every column but the timing, which differs from run to run.
COMPARED = [field for field in RESULT_FIELDS if field != "score_seconds"]


def tiny_split(variant: str = "") -> Split:
    """Three Gaussian blobs in 5-D: learnable within a few epochs."""
    del variant
    generator = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(3, 5, generator=generator)
    labels = torch.randint(0, 3, (120,), generator=generator)
    x = centres[labels] + torch.randn(120, 5, generator=generator)
    return Split(x[:80], labels[:80], x[80:], labels[80:])


def table(path):
    """The rows of a results CSV, timing left out, sorted."""
    return sorted(tuple(row[f] for f in COMPARED) for row in read_rows(path))
