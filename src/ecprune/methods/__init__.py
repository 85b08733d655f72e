"""Pruning methods as objects: one class per method, each a frozen, validated configuration
(:class:`Method`), and the registry that reads their names (:func:`get`)."""

from ..engine.statistics import StatisticsRequest
from .admm import ECPADMM
from .base import LayerImportance, Method, ScoringContext, UpdateStep
from .baselines import LOSSES, Gradient, Magnitude, MagnitudeCompensated, Random, Wanda
from .ecp import ECP, ECPNoCompensation, ECPRefit, SensitivityMethod
from .nonlinear import Nonlinear
from .registry import REGISTRY, MethodOptionError, applicable, get, names, owners
from .sparsegpt import SparseGPT, SparseGPTRefit

__all__ = [
    "ECP",
    "ECPADMM",
    "LOSSES",
    "REGISTRY",
    "ECPNoCompensation",
    "ECPRefit",
    "Gradient",
    "LayerImportance",
    "Magnitude",
    "MagnitudeCompensated",
    "Method",
    "MethodOptionError",
    "Nonlinear",
    "Random",
    "ScoringContext",
    "SensitivityMethod",
    "SparseGPT",
    "SparseGPTRefit",
    "StatisticsRequest",
    "UpdateStep",
    "Wanda",
    "applicable",
    "get",
    "names",
    "owners",
]
