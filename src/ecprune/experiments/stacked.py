"""K fully-connected PReLU networks of one shape, run and trained as one batched model.

Network ``k`` computes ``u^l = (W^l_k * M^l_k) a^{l-1} + b^l_k`` and ``a^l = PReLU(u^l; p^l_k)``
(last layer linear), exactly like ``nn.Sequential(Linear, PReLU(), ..., Linear)`` with the
masks of ``torch.nn.utils.prune``. All networks see the same input batch, so the first layer,
which holds most of the weights, is one GEMM ``(B, n_0) x (n_0, K n_1)``; later layers are
batched matrix products. Narrower networks are embedded by zero-masking the padded units, which
then neither affect the output nor receive gradient: the padding is exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.layers import effective_weight, keep_mask


def mlp(widths: Sequence[int], *, seed: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``Linear, PReLU, ..., Linear`` with PyTorch's default initialisation seeded by ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(n_in, n_out, dtype=dtype))
        if k < len(widths) - 2:
            layers.append(nn.PReLU(dtype=dtype))
    return nn.Sequential(*layers)


def _parts(model: nn.Sequential) -> tuple[list[nn.Linear], list[nn.PReLU]]:
    linears = [m for m in model if isinstance(m, nn.Linear)]
    prelus = [m for m in model if isinstance(m, nn.PReLU)]
    if (len(linears) != len(prelus) + 1 or len(linears) + len(prelus) != len(model)
            or any(p.weight.numel() != 1 for p in prelus)):
        raise TypeError("Only nn.Sequential(Linear, PReLU(), ..., Linear) networks with one "
                        "PReLU slope per layer can be stacked; got " + repr(model))
    return linears, prelus


def _widths(model: nn.Sequential) -> list[int]:
    linears, _ = _parts(model)
    return [linears[0].in_features, *(layer.out_features for layer in linears)]


def _pad(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    padded = torch.zeros(*shape, dtype=tensor.dtype, device=tensor.device)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return padded


class StackedMLP(nn.Module):
    """``K`` PReLU MLPs with frozen weight masks, as stacked tensors.

    Parameters: ``weights[l]`` (K, n_l, n_{l-1}), ``biases[l]`` (K, n_l), ``slopes[l]`` (K,)
    for each hidden layer; buffers ``masks[l]`` (K, n_l, n_{l-1}), 1 where a weight exists.
    ``forward(x)`` maps a shared batch ``x`` (B, n_0) to the outputs (K, B, n_L).
    """

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 slopes: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]):
        super().__init__()
        self.weights = nn.ParameterList(
            [nn.Parameter(w * m) for w, m in zip(weights, masks, strict=True)])
        self.biases = nn.ParameterList([nn.Parameter(b.clone()) for b in biases])
        self.slopes = nn.ParameterList([nn.Parameter(p.clone()) for p in slopes])
        for index, (weight, mask) in enumerate(zip(self.weights, masks, strict=True)):
            self.register_buffer(f"mask{index}", mask.to(weight.dtype))
            # Masked weights start at zero and get zero gradient, so any elementwise optimizer
            # (Adam, SGD, with or without weight decay) leaves them exactly zero. Cheaper than
            # multiplying by the mask in every forward.
            weight.register_hook(self._mask_gradient(index))

    def _mask_gradient(self, index: int):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * getattr(self, f"mask{index}")

        return hook

    @property
    def count(self) -> int:
        """Number of stacked networks ``K``."""
        return self.weights[0].shape[0]

    def masks(self) -> list[torch.Tensor]:
        """The keep masks (K, n_l, n_{l-1}), 1 where a weight exists."""
        return [getattr(self, f"mask{index}") for index in range(len(self.weights))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n_1, n_0 = self.weights[0].shape
        h = torch.addmm(self.biases[0].reshape(-1), x, self.weights[0].reshape(k * n_1, n_0).T)
        h = h.reshape(len(x), k, n_1)  # (B, K, n_1)
        for index in range(1, len(self.weights)):
            # F.prelu's channel dimension is dim 1, here the network index K.
            h = F.prelu(h, self.slopes[index - 1]).transpose(0, 1)  # (K, B, n)
            h = torch.baddbmm(self.biases[index][:, None, :], h,
                              self.weights[index].transpose(1, 2)).transpose(0, 1)
        return h.transpose(0, 1)  # (K, B, n_L)

    @classmethod
    def from_models(cls, models: Sequence[nn.Sequential]) -> StackedMLP:
        """Stack networks with the same depth; narrower ones are zero-padded to the widest.

        Masks come from ``torch.nn.utils.prune`` (``weight_mask``); the effective weights
        ``weight_orig * weight_mask`` are copied.
        """
        widths = [_widths(model) for model in models]
        if len({len(w) for w in widths}) != 1 or len({(w[0], w[-1]) for w in widths}) != 1:
            raise ValueError(f"Cannot stack networks of widths {widths}: the depth, input and "
                             "output widths must agree.")
        full = [max(column) for column in zip(*widths, strict=True)]
        layers = [_parts(model) for model in models]
        weights, biases, slopes, masks = [], [], [], []
        for index, (n_in, n_out) in enumerate(itertools.pairwise(full)):
            linears = [linear[index] for linear, _ in layers]
            weights.append(torch.stack([_pad(effective_weight(m), (n_out, n_in)) for m in linears]))
            masks.append(torch.stack([_pad(keep_mask(m), (n_out, n_in)) for m in linears]))
            biases.append(torch.stack([_pad(m.bias.detach(), (n_out,)) for m in linears]))
            if index < len(full) - 2:
                slopes.append(torch.stack([prelu[index].weight.detach()[0]
                                           for _, prelu in layers]))
        return cls(weights, biases, slopes, masks)

    def network(self, k: int) -> nn.Sequential:
        """Network ``k`` as a dense ``nn.Sequential`` (masked weights are zero; padding kept)."""
        widths = [self.weights[0].shape[2], *(w.shape[1] for w in self.weights)]
        model = mlp(widths, seed=0, dtype=self.weights[0].dtype)
        linears, prelus = _parts(model)
        with torch.no_grad():
            for weight, bias, mask, linear in zip(self.weights, self.biases, self.masks(),
                                                  linears, strict=True):
                linear.weight.copy_(weight[k] * mask[k])
                linear.bias.copy_(bias[k])
            for slope, prelu in zip(self.slopes, prelus, strict=True):
                prelu.weight.fill_(slope[k].item())
        return model


def stacked_losses(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Each network's mean loss (K,): ``outputs`` (K, B, C), ``targets`` (B,) or (B, C)."""
    k, batch = outputs.shape[:2]
    if loss == "cross_entropy":
        flat = F.cross_entropy(outputs.reshape(k * batch, -1), targets.repeat(k),
                               reduction="none")
        return flat.reshape(k, batch).mean(1)
    if loss == "mse":
        diff = outputs - targets.reshape(batch, -1).to(outputs.dtype)
        return diff.square().reshape(k, -1).mean(1)
    raise ValueError(f"Unknown loss {loss!r}; expected 'cross_entropy' or 'mse'.")
