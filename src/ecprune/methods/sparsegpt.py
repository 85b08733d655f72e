"""SparseGPT as a method: OBS scores set how many weights each layer loses, then SparseGPT picks
the weights and updates the rest layer by layer (:mod:`ecprune.reconstruct.sparsegpt`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._validation import check_nonnegative, check_positive_int
from ..engine.layers import keep_mask
from ..engine.statistics import StatisticsRequest
from ..reconstruct.sparsegpt import obs_saliency, sparsegpt_layers
from .base import LayerImportance, ScoringContext, UpdateStep
from .ecp import SensitivityMethod
from .updates import check_refit, refit


@dataclass(frozen=True, kw_only=True)
class SparseGPT(SensitivityMethod):
    """Score ``E[s_i] w_ij^2 / [H^-1]_jj``: the OBS cost of removing ``w_ij`` from the dense
    layer's reconstruction problem (:func:`ecprune.reconstruct.sparsegpt.obs_saliency`) times
    the row's mean output sensitivity, comparable across layers. It only sets how many weights
    each layer loses; the update then runs SparseGPT, which picks the weights and updates the
    rest (it needs the data). No bias shift.

    ``damping``: relative Tikhonov term of each layer's Gram matrix (the paper's 1 %);
    ``block_size``: columns per block of its mask selection and lazy updates.
    """

    name = "sparsegpt"
    rereads_data = True
    update_needs_data = True
    damping: float = 0.01
    block_size: int = 128
    OPTIONS: ClassVar[dict[str, str]] = {
        **SensitivityMethod.OPTIONS, "damping": "damping", "block_size": "block_size"}

    def check(self, caller: str) -> None:
        super().check(caller)
        check_nonnegative("damping", self.damping, caller=caller)
        check_positive_int("block_size", self.block_size, caller=caller)

    def request(self, seed: int) -> StatisticsRequest:
        return self.sensitivity_request(seed, gram=True)

    def layer_importance(self, name: str, context: ScoringContext) -> LayerImportance:
        stats = context.statistics.layers[name]
        saliency = obs_saliency(context.weights[name], context.layers[name].bias, stats.gram,
                                self.damping)
        # Per sample, the rows' error sum_p du_p^2 reaches the output weighted by their own
        # sensitivities (s_i itself with one row per sample); the saliency is per row.
        mean_sensitivity = stats.row_sensitivity[:, None] / context.statistics.count
        return LayerImportance(mean_sensitivity * saliency, None)

    def update(self, step: UpdateStep) -> None:
        """SparseGPT on every layer, input to output, to the selection's per-layer counts (or
        its N:M pattern, whose groups SparseGPT chooses itself)."""
        if not step.removes_any:
            return
        newly = step.selection.newly_pruned
        counts = {name: int((~keep_mask(layer) | newly[name]).sum())
                  for name, layer in step.layers.items()}
        sparsegpt_layers(step.model, step.layers, counts, step.batches, damping=self.damping,
                         block_size=self.block_size, output_fn=step.options.output_fn,
                         progress=step.options.progress, grams=step.importances.grams,
                         pattern=step.selection.pattern)


@dataclass(frozen=True, kw_only=True)
class SparseGPTRefit(SparseGPT):
    """SparseGPT, then every row's kept weights and bias refit toward the dense pre-activations
    like ``"ecp-refit"`` (``weighting`` as there): OBS selection with the least-squares refit."""

    name = "sparsegpt-refit"
    needs_reference = True
    weighting: str = "plain"
    OPTIONS: ClassVar[dict[str, str]] = {**SparseGPT.OPTIONS, "refit_weighting": "weighting"}

    def check(self, caller: str) -> None:
        super().check(caller)
        check_refit(self.weighting, self.damping, caller=caller)

    def update(self, step: UpdateStep) -> None:
        super().update(step)
        refit(step, weighting=self.weighting, damping=self.damping)
