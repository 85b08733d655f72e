"""Model families of the experiment framework: how a job builds, names, counts and stacks the
networks of an architecture tuple (``ExperimentConfig.model``).

``"mlp"``: the paper's ``Linear, PReLU, ..., Linear`` networks of widths ``(n_0, ..., n_L)``,
stacked as one batched :class:`~.stacked.StackedMLP`. ``"mixer"``: the MLP-Mixer of
:mod:`.mixer_model`, architecture ``(p, C, Dt, Dc, N)``, stacked as a list of modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from .config import MODELS, ExperimentConfig, arch_name, weight_count
from .mixer_model import StackedModels, mixer, mixer_name, mixer_weight_count
from .stacked import StackedMLP, mlp


@dataclass(frozen=True)
class ModelFamily:
    """``build(arch, seed=)`` a network, ``stack(models)`` K of them for training and
    evaluation (``.network(k)``, ``.masks()``, ``.count``), ``weight_count(arch)`` and the
    results CSV's ``name(arch)``."""

    build: Callable[..., nn.Module]
    stack: Callable[[Sequence[nn.Module]], nn.Module]
    weight_count: Callable[[Sequence[int]], int]
    name: Callable[[Sequence[int]], str]


FAMILIES: dict[str, ModelFamily] = {
    "mlp": ModelFamily(mlp, StackedMLP.from_models, weight_count, arch_name),
    "mixer": ModelFamily(mixer, StackedModels, mixer_weight_count, mixer_name),
}
if tuple(FAMILIES) != MODELS:
    raise ImportError(f"config.MODELS {MODELS} and families.FAMILIES {tuple(FAMILIES)} differ.")


def family(config: ExperimentConfig) -> ModelFamily:
    """The model family of ``config``."""
    return FAMILIES[config.model]
