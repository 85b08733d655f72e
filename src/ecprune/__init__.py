"""ecprune: elimination-compensation pruning for fully-connected PyTorch networks.

>>> import torch, ecprune
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.PReLU(), torch.nn.Linear(16, 3))
>>> report = ecprune.prune(net, torch.randn(256, 4), sparsity=0.5, method="ecp")
>>> report.kept, report.total
(56, 112)
"""

from . import distributed
from .api import (
    Importances,
    LayerReport,
    Options,
    PruneReport,
    importance,
    prune,
    prune_by_importance,
)
from .criteria import CRITERIA, LayerImportance

__version__ = "0.1.0"

METHODS: tuple[str, ...] = tuple(CRITERIA)

__all__ = [
    "METHODS",
    "Importances",
    "LayerImportance",
    "LayerReport",
    "Options",
    "PruneReport",
    "__version__",
    "distributed",
    "importance",
    "prune",
    "prune_by_importance",
]
