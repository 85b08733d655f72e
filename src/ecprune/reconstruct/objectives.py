"""What the network passes of :mod:`ecprune.reconstruct.network` lower, as a Gauss-Newton model
in the output ``y`` of each sample: a differentiable value ``f``, its gradient ``r = df/dy``
and a factor ``F`` of its Hessian, ``d2f/dy2 = F^T F`` (None: the identity).

- :class:`DenseOutputs` (``objective="network"``): ``f = 1/2 ||y - y_dense||^2``, reported as
  ``||y - y_dense||^2``;
- :class:`LabelLoss` (``objective="loss"``): the training loss on the data's targets,
  cross-entropy for integer targets (``F`` rows ``sqrt(p_k) (e_k - p)``, since the softmax
  Hessian is ``diag(p) - p p^T``), else ``1/2 ||y - t||^2``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.tape import eval_mode, forward
from ..targets import loss_name, regression_target

# Dense outputs kept in memory between passes up to this many values (else recomputed).
CACHE_ELEMENTS = 2**25


class DenseOutputs:
    """The dense network's outputs on each chunk, cached by position while small enough; as an
    objective, the squared distance of the output to them."""

    def __init__(self, reference: nn.Module, output_fn: Callable | None):
        self.reference, self.output_fn = reference, output_fn
        self.cache: dict[int, torch.Tensor] = {}
        self.size = 0

    def __call__(self, batch) -> torch.Tensor:
        if batch.start in self.cache:
            return self.cache[batch.start]
        with torch.no_grad(), eval_mode(self.reference):
            _, output = forward(self.reference, batch.inputs, self.output_fn)
        if self.size + output.numel() <= CACHE_ELEMENTS:
            self.cache[batch.start], self.size = output, self.size + output.numel()
        return output

    def value(self, output: torch.Tensor, batch) -> torch.Tensor:
        return 0.5 * (output - self(batch)).square().sum()

    def reported(self, output: torch.Tensor, batch) -> torch.Tensor:
        return (output - self(batch)).square().sum()

    def residual(self, output: torch.Tensor, batch) -> torch.Tensor:
        return output - self(batch)

    def hessian_factor(self, output: torch.Tensor, batch) -> torch.Tensor | None:
        return None


class LabelLoss:
    """The summed training loss on ``batch.targets``: cross-entropy for integer targets
    (class indices), else half the squared error."""

    def _targets(self, output: torch.Tensor, batch) -> torch.Tensor:
        targets = batch.targets
        if targets is None:
            raise ValueError("objective='loss' fits the network to the data's labels, but the "
                             "data holds inputs only; pass (inputs, targets) batches or a "
                             "TensorDataset, or use objective='network'.")
        if loss_name(targets) == "mse":
            return regression_target(output, targets, "objective='loss'")
        if output.ndim != 2 or targets.shape != output.shape[:1]:
            raise ValueError(f"objective='loss' with integer targets takes them as class "
                             f"indices of the output's (batch, classes) logits; got targets of "
                             f"shape {tuple(targets.shape)} for an output of shape "
                             f"{tuple(output.shape)}.")
        return targets

    def value(self, output: torch.Tensor, batch) -> torch.Tensor:
        targets = self._targets(output, batch)
        if loss_name(targets) == "mse":
            return 0.5 * (output - targets).square().sum()
        return F.cross_entropy(output, targets, reduction="sum")

    reported = value

    def residual(self, output: torch.Tensor, batch) -> torch.Tensor:
        targets = self._targets(output, batch)
        if loss_name(targets) == "mse":
            return output - targets
        return torch.softmax(output, 1) - F.one_hot(targets, output.shape[1]).to(output.dtype)

    def hessian_factor(self, output: torch.Tensor, batch) -> torch.Tensor | None:
        """(B, classes, classes): row ``k`` of sample ``b`` is ``sqrt(p_k) (e_k - p)``, the
        seeds of :func:`ecprune.engine.sensitivity.sensitivities` (``directions``)."""
        if loss_name(self._targets(output, batch)) == "mse":
            return None
        p = torch.softmax(output.detach(), 1)
        eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
        return p.sqrt()[:, :, None] * (eye[None] - p[:, None, :])
