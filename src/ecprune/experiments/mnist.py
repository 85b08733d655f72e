"""The paper's MNIST experiment (ECP.md, sections 4-5): settings and data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..data.datasets import load_mnist
from .config import ExperimentConfig
from .job import Split

MNIST = ExperimentConfig(
    name="mnist",
    architectures=((784, 32, 32, 10), (784, 64, 64, 10)),
    epochs=15,
    finetune_epochs=15,
    batch_size=128,
    loss="cross_entropy",
)

# One architecture, one seed, three ratios, 2 + 2 epochs: the whole pipeline in about a minute.
MNIST_QUICK = replace(MNIST, architectures=((784, 32, 32, 10),), seeds=(0,),
                      ratios=(0.5, 0.8, 0.9), epochs=2, finetune_epochs=2,
                      nonlinear_samples=256)


def load_mnist_split(variant: str = "", *, data_dir: str | Path | None = None) -> Split:
    """MNIST as float pixels in [0, 1] and int64 labels (``variant`` is unused)."""
    del variant
    return Split(*load_mnist(root=data_dir).tensors())
