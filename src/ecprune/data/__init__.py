"""Datasets of the paper's experiments, loaded or generated offline."""

from .datasets import ImageData, load_fashion_mnist, load_mnist
from .diffsorp import DiffSorpDataset, diffsorp_dataset
from .pde import DiffSorpData, DiffSorpProblem, diffusion_sorption

__all__ = [
    "DiffSorpData",
    "DiffSorpDataset",
    "DiffSorpProblem",
    "ImageData",
    "diffsorp_dataset",
    "diffusion_sorption",
    "load_fashion_mnist",
    "load_mnist",
]
