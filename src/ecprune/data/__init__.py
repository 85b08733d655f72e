"""Datasets of the paper's experiments, loaded or generated offline."""

from .pde import DiffSorpData, DiffSorpProblem, diffusion_sorption

__all__ = ["DiffSorpData", "DiffSorpProblem", "diffusion_sorption"]
