"""ecprune: elimination-compensation pruning for fully-connected PyTorch networks.

>>> import torch, ecprune
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.PReLU(), torch.nn.Linear(16, 3))
>>> report = ecprune.prune(net, torch.randn(256, 4), sparsity=0.5, method="ecp")
>>> report.kept, report.total
(56, 112)
"""

from . import distributed, masking, methods, structured
from .api import importance, prune, prune_by_importance
from .budget import BudgetChoice, budget_sparsity, prune_to_budget
from .engine.layers import bake_masks
from .export.compaction import compact, layer_shapes
from .export.semi_structured import to_semi_structured
from .export.sparse import SparseLinear, to_sparse
from .measure import OutputError, output_error
from .methods import LayerImportance, Method
from .options import Options
from .report import Importances, LayerReport, PruneReport
from .structured import NeuronReport, prune_neurons

__version__ = "0.1.0"

# The registered methods' names (the registry itself: ecprune.methods.REGISTRY).
METHODS: tuple[str, ...] = tuple(methods.REGISTRY)
# The unit-removal methods of prune_neurons (ecprune.structured.NEURON_METHODS).
NEURON_METHODS: tuple[str, ...] = tuple(structured.NEURON_METHODS)

__all__ = [
    "METHODS",
    "NEURON_METHODS",
    "BudgetChoice",
    "Importances",
    "LayerImportance",
    "LayerReport",
    "Method",
    "NeuronReport",
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
    "masking",
    "methods",
    "output_error",
    "prune",
    "prune_by_importance",
    "prune_neurons",
    "prune_to_budget",
    "structured",
    "to_semi_structured",
    "to_sparse",
]
