"""Datasets of the paper's experiments, loaded or generated offline."""

from .diffsorp import DiffSorpDataset, diffsorp_dataset
from .pde import DiffSorpData, DiffSorpProblem, diffusion_sorption

__all__ = [
    "DiffSorpData",
    "DiffSorpDataset",
    "DiffSorpProblem",
    "diffsorp_dataset",
    "diffusion_sorption",
]
