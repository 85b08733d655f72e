"""Elementwise activations whose derivative is computed once per forward, not once per reverse pass.

The per-sample engine (:class:`~ecprune.engine.positions.BlockJacobians`) takes one reverse pass
through a chunk's forward per output direction. Through an activation module, each pass would
evaluate the activation's derivative again (``gelu_backward`` is an ``erf`` and an ``exp`` per
element); :func:`cached_derivatives` replaces the module's output by one whose backward is a
product with ``f'(x)``, evaluated once. The values and gradients are the module's own (the
derivative comes from its own autograd formula); only their cost changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Modules whose output is f(x) elementwise (PReLU: per channel, still elementwise in x).
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
               nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink,
               nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid)


class _TimesDerivative(torch.autograd.Function):
    """``y`` in the forward; ``grad * derivative`` with respect to ``x`` in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, derivative: torch.Tensor):
        ctx.save_for_backward(derivative)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (derivative,) = ctx.saved_tensors
        return grad * derivative, None, None


def _hook(module: nn.Module, args: tuple, output: torch.Tensor):
    x = args[0] if len(args) == 1 else None
    if (not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor)
            or not torch.is_grad_enabled() or not x.requires_grad
            or getattr(module, "inplace", False) or output.shape != x.shape):
        return output
    (derivative,) = torch.autograd.grad(output, x, torch.ones_like(output), retain_graph=True)
    return _TimesDerivative.apply(x, output.detach(), derivative)


@contextmanager
def cached_derivatives(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While active, every :data:`ELEMENTWISE` module of ``model`` called on one tensor that
    requires grad (and not ``inplace``) evaluates its derivative once in the forward
    (``enabled=False``: nothing changes)."""
    handles = [module.register_forward_hook(_hook) for module in model.modules()
               if enabled and isinstance(module, ELEMENTWISE)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
