"""Public entry points: :func:`importance`, :func:`prune` and :func:`prune_by_importance`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from . import distributed
from ._validation import check_choice, check_nonnegative, check_positive_int, check_sparsity
from .allocation import allocate, refit_curves
from .batching import check_reiterable, iter_batches
from .compensation import (
    _already_pruned_error,
    apply_pruning,
    preserved,
    select,
    select_counts,
)
from .criteria import CRITERIA, LOSSES, LayerImportance, ScoringContext
from .layers import add_zero_biases, effective_weight, keep_mask, model_dtype_device, select_layers
from .layerwise import detached_copy
from .refit import REFIT_WEIGHTINGS, refit_layers
from .sensitivity import ESTIMATORS
from .sparsegpt import sparsegpt_layers
from .statistics import collect_statistics

SCOPES = ("global", "layer", "row")
ALLOCATIONS = ("global", "refit")
REFIT_ALLOCATED = ("ecp-refit",)


@dataclass(frozen=True)
class Options:
    """Keyword options of :func:`importance` and :func:`prune`.

    layers: names or modules of the ``nn.Linear`` layers to prune (default: all).
    output_fn: function of the model's output giving the tensor ``y`` the sensitivities use.
    loss: for ``"gradient"``: ``"cross_entropy"``, ``"mse"`` or ``f(output, target) -> mean``;
        default: cross-entropy for integer targets, MSE otherwise.
    chunk_size: samples per chunk of the streaming pass.
    seed: seeds ``"random"`` and the subsample of ``"nonlinear"``.
    nonlinear_samples: size of the subsample over which ``"nonlinear"`` takes its expectation.
    add_bias: give bias-free layers a zero bias so they can be compensated (else an error).
    progress: tqdm bars (None: only on a terminal; never on ranks other than 0).
    shard: under ``torch.distributed``, treat ``data`` as the whole dataset, identical on every
        rank, and stream only this rank's share of it; ``False``: ``data`` is already this
        rank's shard. The sums are all-reduced either way.
    sensitivity: how ECP gets ``s_i = ||dy/du_i||^2``: ``"exact"`` (one reverse pass per
        output), ``"hutchinson"`` (unbiased estimate from ``probes`` Rademacher probes per
        sample, cost independent of the number of outputs) or ``"auto"`` (exact up to
        ``ecprune.sensitivity.AUTO_EXACT_OUTPUTS`` outputs, or ``probes`` if more, else
        Hutchinson).
    probes: probes of the Hutchinson estimate (None: ``ecprune.sensitivity.AUTO_PROBES``).
    damping: ``"ecp-refit"``, ``"sparsegpt"`` and ``"sparsegpt-refit"``: relative Tikhonov term,
        ``damping * mean(diag G)`` added to the diagonal of each Gram matrix ``G``
        (:func:`ecprune.layerwise.ridge`).
    block_size: ``"sparsegpt"`` (and ``-refit``): columns per block of its mask selection and
        lazy updates.
    refit_weighting: ``"ecp-refit"`` and ``"sparsegpt-refit"``: ``"plain"`` least squares on the
        pre-activations or ``"sensitivity"``, weighted by ECP's ``s_i(x)`` (:mod:`ecprune.refit`).
    allocation: how many weights each layer loses under ``scope="global"``: ``"global"``
        (the method's global ranking of scores) or ``"refit"`` (``"ecp-refit"`` only: the counts
        that minimise the error left after the refit, :mod:`ecprune.allocation`). None: the
        method's default, ``"refit"`` for ``"ecp-refit"``, else ``"global"``.
    """

    layers: Iterable[str | nn.Module] | None = None
    output_fn: Callable[[object], torch.Tensor] | None = None
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    chunk_size: int = 4096
    seed: int = 0
    nonlinear_samples: int = 1024
    add_bias: bool = False
    progress: bool | None = None
    shard: bool = True
    sensitivity: str = "auto"
    probes: int | None = None
    damping: float = 0.01
    block_size: int = 128
    refit_weighting: str = "plain"
    allocation: str | None = None


def _options(options: dict, caller: str) -> Options:
    valid = [f.name for f in dataclasses.fields(Options)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"{caller}() got unknown option(s) {unknown}; valid options are {valid}.")
    parsed = Options(**options)
    check_positive_int("chunk_size", parsed.chunk_size, caller=caller)
    check_positive_int("nonlinear_samples", parsed.nonlinear_samples, caller=caller)
    check_choice("sensitivity", parsed.sensitivity, ESTIMATORS, caller=caller)
    if parsed.probes is not None:
        check_positive_int("probes", parsed.probes, caller=caller)
    check_positive_int("block_size", parsed.block_size, caller=caller)
    check_nonnegative("damping", parsed.damping, caller=caller)
    check_choice("refit_weighting", parsed.refit_weighting, REFIT_WEIGHTINGS, caller=caller)
    if parsed.allocation is not None:
        check_choice("allocation", parsed.allocation, ALLOCATIONS, caller=caller)
    return parsed


def _allocation(method: str, allocation: str | None) -> str:
    """The allocation to use: ``"refit"`` for ecp-refit unless told otherwise, else global."""
    if allocation is None:
        return "refit" if method in REFIT_ALLOCATED else "global"
    if allocation == "refit" and method not in REFIT_ALLOCATED:
        raise ValueError(f"allocation='refit' applies to method(s) {list(REFIT_ALLOCATED)}, "
                         f"not {method!r}; use allocation='global' or leave it unset.")
    return allocation


class Importances(dict[str, LayerImportance]):
    """Mapping of layer name to :class:`LayerImportance`, with how it was obtained.

    Attributes: ``method``, ``seconds`` (data pass + scoring), ``mean_output_sq``
    (``E||y||^2`` over the data, the scale of relative output errors), ``curves`` (with
    ``allocation="refit"``: each layer's refit error curve, :func:`ecprune.allocation.
    refit_curves`, from which :func:`prune_by_importance` allocates the global count; else None),
    ``grams`` (methods that gather them: each layer's ``sum [a, 1]^T [a, 1]`` over the data,
    float64, which :func:`prune` reuses for the first layer's weight update; else None).
    """

    def __init__(self, items: dict[str, LayerImportance], *, method: str, seconds: float,
                 mean_output_sq: float, curves: dict | None = None,
                 grams: dict[str, torch.Tensor] | None = None):
        super().__init__(items)
        self.method = method
        self.seconds = seconds
        self.mean_output_sq = mean_output_sq
        self.curves = curves
        self.grams = grams


def _auto_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    name = "mse" if target.is_floating_point() else "cross_entropy"
    return LOSSES[name](output, target)


def _resolve_loss(loss: object) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss is None:
        return _auto_loss
    if callable(loss):
        return loss
    return LOSSES[check_choice("loss", loss, LOSSES, caller="importance")]


def _require_targets(loss: Callable) -> Callable:
    def wrapped(output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            raise ValueError(
                "Method 'gradient' needs targets: pass data as (inputs, targets) batches, e.g. "
                "a TensorDataset(inputs, targets) or a DataLoader over one."
            )
        return loss(output, target)

    return wrapped


def _check_biases(layers: dict[str, nn.Linear], method: str, add_bias: bool) -> None:
    missing = [name for name, layer in layers.items() if layer.bias is None]
    if missing and not add_bias:
        raise ValueError(
            f"Method {method!r} compensates removed weights through the bias, but the Linear "
            f"layers {missing} have no bias. Pass add_bias=True to add a zero bias first, or "
            "exclude them with 'layers='."
        )


def _batches(model: nn.Module, data: object, opts: Options):
    """A factory of fresh chunk streams over (this rank's share of) ``data``, one per pass."""
    dtype, device = model_dtype_device(model)
    rank, world_size = distributed.world() if opts.shard else (0, 1)
    return lambda: iter_batches(data, chunk_size=opts.chunk_size, device=device, dtype=dtype,
                                rank=rank, world_size=world_size)


def importance(model: nn.Module, data: object, method: str = "ecp", **options) -> Importances:
    """Score every weight of the selected ``nn.Linear`` layers of ``model``.

    Parameters
    ----------
    model : nn.Module whose prunable layers are ``nn.Linear`` (any structure).
    data : inputs (B, ...), a Dataset/DataLoader or an iterable of ``inputs`` or
        ``(inputs, targets)`` batches; streamed in chunks.
    method : one of ``ecprune.METHODS``.
    **options : see :class:`Options`.

    Returns
    -------
    Importances : ``{layer name: LayerImportance(score, bias_shift)}``, each shaped like the
        weight. For ``"ecp"``, ``score`` is ``I_ij`` and ``bias_shift`` is ``delta*_ij``.

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> scores = ecprune.importance(net, torch.randn(64, 3))
    >>> sorted(scores), scores["0"].score.shape
    (['0', '2'], torch.Size([4, 3]))
    """
    start = time.perf_counter()
    check_choice("method", method, CRITERIA, caller="importance")
    opts = _options(options, "importance")
    criterion = CRITERIA[method]()
    allocation = _allocation(method, opts.allocation)
    layers = select_layers(model, opts.layers)
    if criterion.compensates:
        _check_biases(layers, method, opts.add_bias)
    loss = _require_targets(_resolve_loss(opts.loss)) if criterion.needs_targets else None
    batches = _batches(model, data, opts)()
    request = criterion.request(loss=loss, samples=opts.nonlinear_samples, seed=opts.seed)
    request = dataclasses.replace(request, estimator=opts.sensitivity, probes=opts.probes)
    stats = collect_statistics(model, layers, batches, request, output_fn=opts.output_fn,
                               progress=opts.progress)
    context = ScoringContext(model=model, layers=layers,
                             weights={name: effective_weight(m) for name, m in layers.items()},
                             statistics=stats, seed=opts.seed, output_fn=opts.output_fn,
                             progress=opts.progress, damping=opts.damping)
    scores = criterion.score(context)
    curves = None
    if allocation == "refit":
        curves = refit_curves(stats, layers, context.weights,
                              {name: found.score for name, found in scores.items()}, opts.damping,
                              seed=opts.seed)
    grams = {name: stats.layers[name].gram for name in layers} if request.gram else None
    return Importances(scores, method=method, seconds=time.perf_counter() - start,
                       mean_output_sq=stats.mean_output_sq, curves=curves, grams=grams)


@dataclass(frozen=True)
class LayerReport:
    """One layer after pruning: weights kept of total, the score threshold, predicted error."""

    kept: int
    total: int
    threshold: float | None
    predicted_error: float | None

    @property
    def sparsity(self) -> float:
        return 1 - self.kept / self.total


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` did. ``predicted_error`` is ``sum I_ij`` over the weights removed now
    (methods whose score is an output error: ecp, ecp-nocomp, nonlinear), else None."""

    method: str
    scope: str
    sparsity: float
    layers: dict[str, LayerReport]
    seconds: float
    scoring_seconds: float
    predicted_error: float | None
    mean_output_sq: float | None
    steps: int = 1

    @property
    def kept(self) -> int:
        return sum(layer.kept for layer in self.layers.values())

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers.values())

    @property
    def relative_predicted_error(self) -> float | None:
        """``sum I / E||y||^2``: the predicted output error relative to the output's size."""
        if self.predicted_error is None or not self.mean_output_sq:
            return None
        return self.predicted_error / self.mean_output_sq

    def to_dict(self) -> dict:
        """JSON-ready dictionary of the report."""
        result = dataclasses.asdict(self)
        result.update(kept=self.kept, total=self.total,
                      relative_predicted_error=self.relative_predicted_error)
        return result


def _scope(method: str, scope: str | None) -> str:
    """The scope to use: the method's default (Wanda: "row", else "global") when None."""
    if scope is None:
        return CRITERIA[method].default_scope
    return check_choice("scope", scope, SCOPES, caller="prune")


def _report(importances: Importances, layers: dict[str, nn.Linear], selection, scope: str,
            sparsity: float, start: float) -> PruneReport:
    predicts = CRITERIA[importances.method].predicts_error
    reports = {}
    for name, layer in layers.items():
        newly = selection.newly_pruned[name]
        score = importances[name].score
        error = score[newly].to(torch.float64).sum().item() if predicts else None
        reports[name] = LayerReport(kept=int(keep_mask(layer).sum()), total=layer.weight.numel(),
                                    threshold=selection.thresholds[name], predicted_error=error)
    total_error = sum(r.predicted_error for r in reports.values()) if predicts else None
    return PruneReport(method=importances.method, scope=scope, sparsity=sparsity, layers=reports,
                       seconds=importances.seconds + time.perf_counter() - start,
                       scoring_seconds=importances.seconds, predicted_error=total_error,
                       mean_output_sq=importances.mean_output_sq)


def _select(model: nn.Module, importances: Importances, sparsity: float, scope: str | None):
    sparsity = check_sparsity(sparsity, caller="prune")
    scope = _scope(importances.method, scope)
    layers = select_layers(model, list(importances))
    present = {name: keep_mask(layer) for name, layer in layers.items()}
    scores = {name: result.score for name, result in importances.items()}
    if scope != "global" or importances.curves is None:
        return sparsity, scope, layers, present, select(scores, present, sparsity, scope)
    total = sum(mask.numel() for mask in present.values())
    count, existing = round(sparsity * total), sum(int((~m).sum()) for m in present.values())
    if existing > count:
        raise _already_pruned_error("The model", existing, count, total)
    counts = allocate(importances.curves, count)
    return sparsity, scope, layers, present, select_counts(scores, present, counts)


def prune_by_importance(model: nn.Module, importances: Importances, sparsity: float,
                        scope: str | None = None, *, add_bias: bool = False) -> PruneReport:
    """Prune ``model`` in place from precomputed :func:`importance` results.

    Useful to prune copies of one model at several ratios from one scoring pass. It selects
    and applies the bias shifts only: the weight updates of ``"ecp-refit"`` and
    ``"sparsegpt"`` need the data and happen in :func:`prune`.
    """
    start = time.perf_counter()
    sparsity, scope, layers, _, selection = _select(model, importances, sparsity, scope)
    shifts = {name: result.bias_shift for name, result in importances.items()}
    if any(shift is not None for shift in shifts.values()):
        _check_biases(layers, importances.method, add_bias)
    added = add_zero_biases(layers) if add_bias else []
    try:
        apply_pruning(layers, selection.newly_pruned, shifts)
    except Exception:
        for name in added:
            layers[name].bias = None
        raise
    return _report(importances, layers, selection, scope, sparsity, start)


# A pruning step: ``(model, data, sparsity, method, scope, options, reference) -> (report,
# importances)``, the importances it scored with (whose Gram matrices a refit may reuse).


def _one_shot(model, data, sparsity, method, scope, options, reference):
    """Score, select and apply the shifts."""
    del reference
    scores = importance(model, data, method, **options)
    return prune_by_importance(model, scores, sparsity, scope,
                               add_bias=options.get("add_bias", False)), scores


def _sparsegpt(model, data, sparsity, method, scope, options, reference):
    """Per-layer counts from the selection, then SparseGPT layer by layer."""
    del reference
    scores = importance(model, data, method, **options)
    start, opts = time.perf_counter(), _options(options, "prune")
    sparsity, scope, layers, present, selection = _select(model, scores, sparsity, scope)
    counts = {name: int((~present[name] | selection.newly_pruned[name]).sum())
              for name in layers}
    if opts.add_bias:
        add_zero_biases(layers)
    if any(selection.newly_pruned[name].any() for name in layers):
        sparsegpt_layers(model, layers, counts, _batches(model, data, opts),
                         damping=opts.damping, block_size=opts.block_size,
                         output_fn=opts.output_fn, progress=opts.progress, grams=scores.grams)
    return _report(scores, layers, selection, scope, sparsity, start), scores


def _removed(layers: dict[str, nn.Linear]) -> int:
    return sum(int((~keep_mask(layer)).sum()) for layer in layers.values())


def _then_refit(step):
    """``step`` (a selection and its own compensation), then the layer-wise least-squares refit
    of every kept weight and bias toward the dense ``reference`` (:mod:`ecprune.refit`)."""

    def refit(model, data, sparsity, method, scope, options, reference):
        layers = select_layers(model, options.get("layers"))
        removed = _removed(layers)
        report, scores = step(model, data, sparsity, method, scope, options, None)
        start, opts = time.perf_counter(), _options(options, "prune")
        if _removed(layers) == removed:
            return report, scores  # nothing new removed: the model is left as it is
        refit_layers(model, reference, select_layers(model, list(report.layers)),
                     _batches(model, data, opts), weighting=opts.refit_weighting,
                     damping=opts.damping, output_fn=opts.output_fn, progress=opts.progress,
                     grams=scores.grams)
        seconds = report.seconds + time.perf_counter() - start
        return dataclasses.replace(report, seconds=seconds), scores

    return refit


PRUNE_STEPS = {"ecp-refit": _then_refit(_one_shot), "sparsegpt": _sparsegpt,
               "sparsegpt-refit": _then_refit(_sparsegpt)}
REFITTING = ("ecp-refit", "sparsegpt-refit")


def step_sparsities(start: float, sparsity: float, steps: int) -> list[float]:
    """Targets of ``steps`` prunings from ``start`` to ``sparsity``, geometric in the kept
    fraction: each step removes the same share of the weights still present.

    >>> [round(s, 4) for s in step_sparsities(0.0, 0.75, 2)]
    [0.5, 0.75]
    """
    if start >= sparsity:
        return [sparsity]
    kept, final = 1 - start, 1 - sparsity
    return [1 - kept * (final / kept) ** (t / steps) for t in range(1, steps)] + [sparsity]


def _combine(reports: list[PruneReport]) -> PruneReport:
    """One report for several steps: the last step's masks, times and errors summed."""
    last = reports[-1]
    if len(reports) == 1:
        return last

    def total(values):
        values = list(values)
        return None if None in values else sum(values)

    layers = {name: dataclasses.replace(
        layer, predicted_error=total(r.layers[name].predicted_error for r in reports))
        for name, layer in last.layers.items()}
    return dataclasses.replace(
        last, layers=layers, seconds=sum(r.seconds for r in reports),
        scoring_seconds=sum(r.scoring_seconds for r in reports),
        predicted_error=total(r.predicted_error for r in reports),
        mean_output_sq=reports[0].mean_output_sq, steps=len(reports))


def prune(model: nn.Module, data: object, sparsity: float, method: str = "ecp",
          scope: str | None = None, *, steps: int = 1, **options) -> PruneReport:
    """Score, then remove exactly ``round(sparsity * |W|)`` weights of ``model`` in place.

    Compensating methods (ecp, nonlinear, magnitude-comp) add the shifts of the removed
    weights to their neurons' biases; ``"ecp-refit"`` then refits the kept weights and biases
    layer by layer (:mod:`ecprune.refit`); ``"sparsegpt"`` prunes and updates layer by layer
    (:mod:`ecprune.sparsegpt`), ``"sparsegpt-refit"`` then refits like ``"ecp-refit"``. Masks
    use ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``); weights already masked
    stay pruned and count toward ``sparsity``.
    ``scope``: ``"global"``, ``"layer"`` or ``"row"``; None picks the method's own (``"row"``
    for Wanda, else ``"global"``). ``steps=k`` reaches ``sparsity`` in ``k`` prunings
    (:func:`step_sparsities`), re-scoring and re-compensating the current pruned network each
    time (the refitting methods refit toward the network as it was before the first step). It is
    all or nothing: on an error the model is left as it was.

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> report = ecprune.prune(net, torch.randn(128, 3), sparsity=0.5)
    >>> report.kept, report.total
    (20, 40)
    """
    sparsity = check_sparsity(sparsity, caller="prune")
    check_positive_int("steps", steps, caller="prune")
    check_choice("method", method, CRITERIA, caller="prune")
    scope = _scope(method, scope)
    opts = _options(options, "prune")
    step = PRUNE_STEPS.get(method, _one_shot)
    if steps > 1 or step is not _one_shot:
        check_reiterable(data, f"method={method!r} with steps={steps}")
    layers = select_layers(model, opts.layers)
    reference = detached_copy(model) if method in REFITTING else None
    start = _removed(layers) / sum(layer.weight.numel() for layer in layers.values())
    with preserved(layers):
        reports = [step(model, data, target, method, scope, options, reference)[0]
                   for target in step_sparsities(start, sparsity, steps)]
    return _combine(reports)
