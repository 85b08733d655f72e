"""2:4 semi-structured weights for the sparse tensor cores of NVIDIA GPUs (Ampere and later).

A layer pruned with ``pattern="2:4"`` (:func:`ecprune.prune`) keeps 2 of every 4 consecutive
inputs of each row, the layout these cores multiply at up to twice the dense rate.
:func:`to_semi_structured` stores such weights as ``torch.sparse.to_sparse_semi_structured``
tensors, which ``nn.Linear``'s forward then uses. PyTorch supports them on CUDA only, for
float16 and bfloat16 among the floating dtypes, with shape constraints of its own (for example
rows and columns multiples of 32 and 64 with the CUTLASS kernels). Inference only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ..engine.layers import bake_masks, copy_model, effective_weight, select_layers
from ..masking.pattern import Pattern, satisfies_pattern

SEMI_STRUCTURED = Pattern(2, 4)
DTYPES = (torch.float16, torch.bfloat16)
# Sparse tensor cores arrived with Ampere (compute capability 8.0).
MIN_CAPABILITY = (8, 0)
# PyTorch warns once that the API "is in prototype stage"; it is the documented way to build them.
_PROTOTYPE_WARNING = "The PyTorch API of SparseSemiStructuredTensor is in prototype stage"


def _check_pattern(name: str, layer: nn.Linear) -> None:
    if layer.in_features % SEMI_STRUCTURED.m or not satisfies_pattern(layer, SEMI_STRUCTURED):
        raise ValueError(
            f"to_semi_structured: layer {name!r} is not 2:4 sparse (every group of 4 "
            f"consecutive inputs of a row keeping at most 2 nonzero weights; in_features="
            f"{layer.in_features}). Prune it with ecprune.prune(..., pattern='2:4'), or leave "
            "it out with layers=[...]."
        )


def _check_device(name: str, weight: torch.Tensor) -> None:
    if weight.device.type != "cuda":
        raise ValueError(
            f"to_semi_structured: layer {name!r} is on {weight.device.type}, but PyTorch's "
            "semi-structured sparse weights need a CUDA GPU of compute capability "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or more. Move the model first, e.g. "
            "model.cuda().half()."
        )
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < MIN_CAPABILITY:
        raise ValueError(
            f"to_semi_structured: layer {name!r} is on a GPU of compute capability "
            f"{capability[0]}.{capability[1]}; semi-structured sparsity needs "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or more (Ampere or later)."
        )
    if weight.dtype not in DTYPES:
        raise ValueError(
            f"to_semi_structured: layer {name!r} holds {weight.dtype} weights; expected "
            f"{' or '.join(map(str, DTYPES))}. Convert the model first, e.g. model.half()."
        )


def _compress(name: str, weight: torch.Tensor) -> torch.Tensor:
    """``torch.sparse.to_sparse_semi_structured(weight)``, its errors naming the layer."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PROTOTYPE_WARNING)
            return torch.sparse.to_sparse_semi_structured(weight.detach().contiguous())
    except RuntimeError as err:  # PyTorch's shape and backend constraints
        raise ValueError(f"to_semi_structured: layer {name!r}: "
                         f"{' '.join(str(err).split())}") from None


def to_semi_structured(model: nn.Module, *,
                       layers: Iterable[str | nn.Module] | None = None) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers hold 2:4 semi-structured sparse weights.

    ``layers``: names or modules of ``model``'s layers to convert (default: every
    ``nn.Linear``); each must be 2:4 sparse (:func:`ecprune.masking.satisfies_pattern`), on a
    CUDA GPU of compute capability 8.0 or more, in float16 or bfloat16, else a ValueError
    names it. Pruning masks are made permanent in the copy (``model`` is not modified); the
    weights become frozen Parameters holding
    ``torch.sparse.to_sparse_semi_structured(weight)``, the biases stay dense.

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32))
    >>> _ = ecprune.prune(net, torch.randn(256, 64), pattern="2:4")
    >>> ecprune.masking.satisfies_pattern(net[0], "2:4")
    True
    >>> ecprune.to_semi_structured(net)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: to_semi_structured: layer '0' is on cpu, ...
    """
    selected = select_layers(model, layers)
    for name, layer in selected.items():
        _check_pattern(name, layer)
        _check_device(name, effective_weight(layer))
    result = bake_masks(copy_model(model))
    for name in selected:
        layer = result.get_submodule(name)
        layer.weight = nn.Parameter(_compress(name, layer.weight), requires_grad=False)
    return result
