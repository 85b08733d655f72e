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
from .budget import BudgetChoice, budget_sparsity, prune_to_budget
from .compaction import compact, layer_shapes
from .criteria import CRITERIA, LayerImportance
from .layers import bake_masks
from .measure import OutputError, output_error
from .sparse import SparseLinear, to_sparse

__version__ = "0.1.0"

METHODS: tuple[str, ...] = tuple(CRITERIA)

__all__ = [
    "METHODS",
    "BudgetChoice",
    "Importances",
    "LayerImportance",
    "LayerReport",
    "Options",
    "OutputError",
    "PruneReport",
    "SparseLinear",
    "__version__",
    "bake_masks",
    "budget_sparsity",
    "compact",
    "distributed",
    "importance",
    "layer_shapes",
    "output_error",
    "prune",
    "prune_by_importance",
    "prune_to_budget",
    "to_sparse",
]
