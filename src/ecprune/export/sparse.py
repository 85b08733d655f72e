"""Sparse inference: ``nn.Linear`` layers with their weights stored as CSR matrices.

A pruned layer's zeros still cost time in a dense matrix product. :class:`SparseLinear` keeps
only the nonzero weights (``torch.sparse_csr``) and computes ``y = W x + b`` with a sparse-dense
product. Whether that is faster depends on the sparsity, the batch size and the hardware:
see ``docs/sparse-inference.md`` (on CPU it is slower below about 90% sparsity). Inference
only: the CSR weights are buffers, not trainable parameters.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..engine.layers import bake_masks, copy_model

# PyTorch warns once that CSR support is "in beta"; it is the documented way to hold CSR data.
_CSR_BETA_WARNING = "Sparse CSR tensor support is in beta"


def _to_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CSR_BETA_WARNING)
        return weight.detach().to_sparse_csr()


def _check_product(weight: torch.Tensor) -> None:
    """ValueError unless PyTorch has the CSR product for ``weight``'s dtype and device (on CPU,
    its MKL kernel has none for float16 or bfloat16): tried once on one zero column."""
    column = torch.zeros(weight.shape[1], 1, dtype=weight.dtype, device=weight.device)
    try:
        torch.sparse.mm(weight, column)
    except (NotImplementedError, RuntimeError) as err:
        reason = " ".join(str(err).split()).split(". ")[0]
        raise ValueError(f"SparseLinear cannot hold {weight.dtype} weights on "
                         f"{weight.device.type}: PyTorch has no sparse CSR product for them "
                         f"({reason}). Convert the model first, e.g. model.float().") from None


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` (out_features, in_features) stored in CSR format.

    Build one with :meth:`from_linear`; inputs may have any leading dimensions, as for
    ``nn.Linear``.

    >>> import torch
    >>> dense = torch.nn.Linear(4, 3)
    >>> sparse = SparseLinear.from_linear(dense)
    >>> x = torch.randn(5, 4)
    >>> torch.allclose(sparse(x), dense(x), atol=1e-6)
    True
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"SparseLinear needs a 2-D weight; got shape {tuple(weight.shape)}.")
        self.out_features, self.in_features = weight.shape
        csr = _to_csr(weight)
        _check_product(csr)
        self.register_buffer("weight", csr)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SparseLinear:
        """The sparse equivalent of ``linear`` (its pruning mask applied)."""
        return cls(linear.weight, linear.bias)

    @property
    def nnz(self) -> int:
        """Number of stored (nonzero) weights."""
        return int(self.weight.values().numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear expects {self.in_features} input features; got an "
                             f"input of shape {tuple(x.shape)}.")
        flat = x.reshape(math.prod(x.shape[:-1]), self.in_features).T  # (in, B)
        if self.bias is None:
            out = torch.sparse.mm(self.weight, flat)
        else:
            out = torch.addmm(self.bias[:, None], self.weight, flat)  # (out, B)
        return out.T.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, bias={self.bias is not None}")


def to_sparse(model: nn.Module, *, min_sparsity: float = 0.0) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers are :class:`SparseLinear`.

    Only layers with at least ``min_sparsity`` of their weights zero are converted (e.g.
    ``min_sparsity=0.9`` where dense products are faster below that); pruning masks are
    applied. ``model`` is not modified.

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> sparse = ecprune.to_sparse(net)
    >>> type(sparse[0]).__name__
    'SparseLinear'
    """
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, int | float) \
            or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError("The 'min_sparsity' parameter of to_sparse must be a float in the range "
                         f"[0.0, 1.0]. Got {min_sparsity!r} instead.")
    if isinstance(model, nn.Linear):
        return to_sparse(nn.Sequential(model), min_sparsity=min_sparsity)[0]
    result = bake_masks(copy_model(model))
    targets = [name for name, m in result.named_modules() if isinstance(m, nn.Linear)]
    for name in targets:
        linear = result.get_submodule(name)
        zeros = (linear.weight == 0).sum().item() / max(1, linear.weight.numel())
        if zeros >= min_sparsity:
            try:
                result.set_submodule(name, SparseLinear.from_linear(linear))
            except ValueError as err:
                raise ValueError(f"to_sparse: layer {name!r}: {err}") from None
    return result
