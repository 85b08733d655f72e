"""Public entry points: :func:`importance`, :func:`prune` and :func:`prune_by_importance`.

Each validates its input once, then runs :mod:`ecprune.pipeline`. ``method`` is a name of
``ecprune.METHODS`` with its options as keywords, or a :class:`ecprune.methods.Method` instance
(a user's own subclass included).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from . import distributed
from ._validation import check_choice, check_positive_int, check_sparsity
from .engine.batching import check_reiterable
from .engine.layers import keep_mask, select_layers
from .masking.apply import preserved
from .masking.pattern import Pattern, check_pattern_layers, check_pattern_sparsity, parse_pattern
from .masking.schedule import step_sparsities
from .masking.selection import SCOPES
from .methods import Method
from .options import parse_options
from .pipeline import batch_factory, fingerprint, prune_scored, score
from .reconstruct.layerwise import detached_copy
from .report import Importances, PruneReport, combine_reports

__all__ = ["importance", "prune", "prune_by_importance", "step_sparsities"]


def importance(model: nn.Module, data: object, method: str | Method = "ecp",
               **options) -> Importances:
    """Score every weight of the selected ``nn.Linear`` layers of ``model``.

    Parameters
    ----------
    model : nn.Module whose prunable layers are ``nn.Linear`` (any structure).
    data : inputs (B, ...), a Dataset/DataLoader or an iterable of ``inputs`` or
        ``(inputs, targets)`` batches; streamed in chunks.
    method : one of ``ecprune.METHODS`` or a :class:`ecprune.methods.Method`.
    **options : the run's (:class:`ecprune.Options`) and, with a name, the method's own
        (e.g. ``damping`` for ``"sparsegpt"``: :mod:`ecprune.methods`).

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
    method, opts = parse_options(method, options, "importance")
    layers = select_layers(model, opts.layers)
    distributed.check_agreement(fingerprint(method, opts, layers, data))
    return score(model, data, layers, method, opts)


def _scope(method: Method, scope: str | None, caller: str) -> str:
    """The scope to use: the method's default (Wanda: "row", else "global") when None."""
    if scope is None:
        return method.default_scope
    return check_choice("scope", scope, SCOPES, caller=caller)


def _pattern(pattern: object, sparsity: object, scope: str | None,
             caller: str) -> tuple[Pattern | None, float]:
    """The parsed N:M ``pattern`` (None without one) and the sparsity to prune to, checked
    against each other and ``scope``."""
    if pattern is None:
        return None, check_sparsity(sparsity, caller=caller)
    pattern = parse_pattern(pattern, caller=caller)
    if scope is not None:
        raise ValueError(
            f"The 'scope' parameter of {caller} must be None with pattern='{pattern}': the "
            f"pattern selects within each group of {pattern.m} inputs of a row, so scope and the "
            f"methods' per-layer allocations do not apply. Got scope={scope!r}; drop it.")
    return pattern, check_pattern_sparsity(sparsity, pattern, caller=caller)


def _removed(layers: dict[str, nn.Linear]) -> int:
    return sum(int((~keep_mask(layer)).sum()) for layer in layers.values())


def prune(model: nn.Module, data: object, sparsity: float | None = None,
          method: str | Method = "ecp", scope: str | None = None, *, steps: int = 1,
          pattern: str | None = None, **options) -> PruneReport:
    """Score, then remove exactly ``round(sparsity * |W|)`` weights of ``model`` in place.

    Compensating methods (ecp, nonlinear, magnitude-comp) add the shifts of the removed
    weights to their neurons' biases; ``"ecp-refit"`` then refits the kept weights and biases
    layer by layer (:mod:`ecprune.reconstruct.refit`); ``"sparsegpt"`` prunes and updates layer
    by layer (:mod:`ecprune.reconstruct.sparsegpt`), ``"sparsegpt-refit"`` then refits like
    ``"ecp-refit"``. Masks use ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``);
    weights already masked stay pruned and count toward ``sparsity``.
    ``scope``: ``"global"``, ``"layer"`` or ``"row"``; None picks the method's own (``"row"``
    for Wanda, else ``"global"``). ``steps=k`` reaches ``sparsity`` in ``k`` prunings
    (:func:`step_sparsities`), re-scoring and re-compensating the current pruned network each
    time (the refitting methods refit toward the network as it was before the first step). It is
    all or nothing: on an error the model is left as it was.

    ``pattern="N:M"`` (e.g. ``"2:4"``): semi-structured sparsity. In every row, each group of
    ``M`` consecutive inputs keeps ``N`` weights, its ``M - N`` lowest scores removed (weights
    already masked count as removed); the layers' ``in_features`` must be multiples of ``M``.
    ``sparsity`` is then ``1 - N/M`` or None, ``scope`` None and ``steps`` 1; compensation and
    the reconstructions keep the pattern (SparseGPT chooses each group as in its paper's N:M
    variant). The report's ``scope`` is the pattern.

    Examples
    --------
    >>> import torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> report = ecprune.prune(net, torch.randn(128, 3), sparsity=0.5)
    >>> report.kept, report.total
    (20, 40)
    >>> ecprune.prune(net, torch.randn(128, 3), 0.75, ecprune.methods.SparseGPT(block_size=4)).kept
    10
    """
    pattern, sparsity = _pattern(pattern, sparsity, scope, "prune")
    check_positive_int("steps", steps, caller="prune")
    if pattern is not None and steps > 1:
        raise ValueError(
            f"steps>1 is not supported with pattern='{pattern}': every group keeps exactly "
            f"{pattern.n} of {pattern.m} in one pruning, and a partial pattern is undefined. "
            f"Got steps={steps}; pass steps=1.")
    method, opts = parse_options(method, options, "prune")
    scope = _scope(method, scope, "prune") if pattern is None else str(pattern)
    if steps > 1 or method.rereads_data:
        check_reiterable(data, f"method={method.label!r} with steps={steps}")
    layers = select_layers(model, opts.layers)
    if pattern is not None:
        check_pattern_layers(layers, pattern)
    distributed.check_agreement(fingerprint(method, opts, layers, data, sparsity=sparsity,
                                            scope=scope, steps=steps))
    reference = detached_copy(model) if method.needs_reference else None
    batches = batch_factory(model, data, opts)
    start = _removed(layers) / sum(layer.weight.numel() for layer in layers.values())
    reports = []
    with preserved(layers):
        for target in step_sparsities(start, sparsity, steps):
            scores = score(model, data, layers, method, opts, allocates=pattern is None)
            reports.append(prune_scored(model, layers, scores, target, scope, batches=batches,
                                        reference=reference, options=opts))
    return combine_reports(reports)


def prune_by_importance(model: nn.Module, importances: Importances,
                        sparsity: float | None = None, scope: str | None = None, *,
                        data: object = None, add_bias: bool | None = None,
                        pattern: str | None = None) -> PruneReport:
    """Prune ``model`` in place from precomputed :func:`importance` results, as :func:`prune`
    does after scoring.

    Useful to prune copies of one model at several ratios from one scoring pass. The methods
    whose update reads the data again need ``data`` (the data they were scored on):
    ``"sparsegpt"`` and ``"sparsegpt-refit"`` raise without it; ``"ecp-refit"`` without it
    applies ECP's selection and shifts only, the refit's starting point. The run's options
    (chunk size, ``output_fn``, ``add_bias``) are those the importances were computed with;
    ``add_bias`` overrides theirs. ``pattern="N:M"`` as in :func:`prune`.

    Examples
    --------
    >>> import copy, torch, ecprune
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(128, 3)
    >>> scores = ecprune.importance(net, x, "sparsegpt")
    >>> ecprune.prune_by_importance(copy.deepcopy(net), scores, 0.5, data=x).kept
    20
    """
    pattern, sparsity = _pattern(pattern, sparsity, scope, "prune")
    if not isinstance(importances, Importances):
        raise TypeError("The 'importances' parameter of prune_by_importance must be the result "
                        f"of ecprune.importance. Got {type(importances).__name__} instead.")
    method, opts = importances.method_object, importances.options
    if add_bias is not None:
        opts = dataclasses.replace(opts, add_bias=add_bias)
    if data is None and method.update_needs_data:
        raise ValueError(
            f"Method {method.label!r} picks and updates the weights layer by layer on the data "
            "after scoring, so prune_by_importance needs it: pass data=... (the data the "
            "importances were computed on), or use ecprune.prune."
        )
    scope = _scope(method, scope, "prune") if pattern is None else str(pattern)
    layers = select_layers(model, list(importances))
    if pattern is not None:
        check_pattern_layers(layers, pattern)
    if data is not None and method.rereads_data:
        check_reiterable(data, f"method={method.label!r}")
    batches = None if data is None else batch_factory(model, data, opts)
    reference = detached_copy(model) if method.needs_reference and data is not None else None
    return prune_scored(model, layers, importances, sparsity, scope, batches=batches,
                        reference=reference, options=opts)
