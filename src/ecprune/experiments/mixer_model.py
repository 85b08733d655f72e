"""A small MLP-Mixer (Tolstikhin et al. 2021) for 28 x 28 images, and its model family for the
experiment framework (:mod:`.job`): layers with several rows per sample.

An image is cut into non-overlapping ``p x p`` patches (``p = 7``: 16 tokens of 49 pixels),
embedded by one ``Linear(p^2, C)`` applied to every token, then ``N`` Mixer blocks each add

    token mixing:    x + (Linear(Dt, T) . GELU . Linear(T, Dt))(LayerNorm(x)^T)^T
    channel mixing:  x + (Linear(Dc, C) . GELU . Linear(C, Dc))(LayerNorm(x))

to the ``(B, T, C)`` tokens; a final LayerNorm, the mean over tokens and a ``Linear(C, 10)``
head give the logits. Every ``nn.Linear`` but the head sees several rows per sample (T tokens,
or C channels for the token-mixing layers), which ECP handles exactly
(:mod:`ecprune.engine.positions`). An architecture is the integer tuple
``(p, C, Dt, Dc, N)``, named ``"mixer-p7-c32-t32-d64-n2"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..engine.layers import keep_mask

IMAGE_SIDE = 28
CLASSES = 10


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each a pre-LayerNorm residual MLP."""

    def __init__(self, tokens: int, channels: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.token_norm = nn.LayerNorm(channels)
        self.token_in = nn.Linear(tokens, token_hidden)
        self.token_out = nn.Linear(token_hidden, tokens)
        self.channel_norm = nn.LayerNorm(channels)
        self.channel_in = nn.Linear(channels, channel_hidden)
        self.channel_out = nn.Linear(channel_hidden, channels)
        # A module, not F.gelu: the per-sample engine then evaluates its derivative once per
        # forward (ecprune.engine.activations); it holds no parameters, so checkpoints agree.
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        mixed = self.token_norm(x).transpose(1, 2)  # (B, C, T)
        x = x + self.token_out(self.activation(self.token_in(mixed))).transpose(1, 2)
        return x + self.channel_out(self.activation(self.channel_in(self.channel_norm(x))))


class MLPMixer(nn.Module):
    """MLP-Mixer on flat 28 x 28 images ``(B, 784)`` -> logits ``(B, 10)``."""

    def __init__(self, patch: int, channels: int, token_hidden: int, channel_hidden: int,
                 blocks: int):
        super().__init__()
        if IMAGE_SIDE % patch:
            raise ValueError(f"The patch size must divide {IMAGE_SIDE}; got {patch}.")
        self.patch = patch
        tokens = (IMAGE_SIDE // patch) ** 2
        self.embed = nn.Linear(patch * patch, channels)
        self.blocks = nn.Sequential(*(MixerBlock(tokens, channels, token_hidden, channel_hidden)
                                      for _ in range(blocks)))
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, CLASSES)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 784)`` -> ``(B, T, p^2)``, patches in row-major order."""
        p, side = self.patch, IMAGE_SIDE // self.patch
        images = x.reshape(len(x), side, p, side, p)
        return images.permute(0, 1, 3, 2, 4).reshape(len(x), side * side, p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.blocks(self.embed(self.patches(x)))  # (B, T, C)
        return self.head(self.norm(tokens).mean(1))


def mixer(arch: Sequence[int], *, seed: int) -> MLPMixer:
    """The Mixer of architecture ``(p, C, Dt, Dc, N)`` with PyTorch's default initialisation
    seeded by ``seed``."""
    torch.manual_seed(seed)
    return MLPMixer(*arch)


def mixer_weight_count(arch: Sequence[int]) -> int:
    """Weights of every ``nn.Linear`` (biases and LayerNorm parameters excluded).

    >>> mixer_weight_count((7, 32, 32, 64, 2))
    12128
    """
    patch, channels, token_hidden, channel_hidden, blocks = arch
    tokens = (IMAGE_SIDE // patch) ** 2
    block = 2 * tokens * token_hidden + 2 * channels * channel_hidden
    return patch * patch * channels + blocks * block + channels * CLASSES


def mixer_name(arch: Sequence[int]) -> str:
    """``(7, 32, 32, 64, 2)`` -> ``"mixer-p7-c32-t32-d64-n2"``."""
    return "mixer-" + "-".join(f"{key}{value}" for key, value in zip("pctdn", arch, strict=True))


class StackedModels(nn.Module):
    """``K`` networks of one architecture run on the same batch: ``(B, ...)`` -> ``(K, B, C)``.

    The interface :func:`~ecprune.experiments.training.train` and ``evaluate`` read from a
    :class:`~ecprune.experiments.stacked.StackedMLP`, for any architecture. Weights removed with
    ``torch.nn.utils.prune`` stay removed in training: the forward pass multiplies by the mask.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    @property
    def count(self) -> int:
        """Number of stacked networks ``K``."""
        return len(self.models)

    @property
    def weights(self) -> list[torch.Tensor]:
        """The first network's parameters (training reads their device)."""
        return list(self.models[0].parameters())

    def masks(self) -> list[torch.Tensor]:
        """Per ``nn.Linear``, the keep masks of the ``K`` networks ``(K, n_out, n_in)``."""
        layers = [[m for m in model.modules() if isinstance(m, nn.Linear)]
                  for model in self.models]
        return [torch.stack([keep_mask(layer) for layer in column])
                for column in zip(*layers, strict=True)]

    def network(self, k: int) -> nn.Module:
        """Network ``k`` itself (not a copy)."""
        return self.models[k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(x) for model in self.models])
