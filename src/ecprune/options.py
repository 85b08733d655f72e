"""The keyword options of the entry points, split once at the public boundary into the method's
configuration (:mod:`ecprune.methods`) and the options of the run (:class:`Options`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ._validation import check_choice, check_positive_int
from .engine.positions import POSITIONS, PRODUCTS
from .methods import REGISTRY, Method, get
from .methods.registry import METHOD_OPTIONS


@dataclass(frozen=True)
class Options:
    """Keyword options of :func:`ecprune.importance` and :func:`ecprune.prune` that every method
    takes (a method's own options, such as ``damping``, configure the method: see
    :mod:`ecprune.methods`).

    layers: names or modules of the ``nn.Linear`` layers to prune (default: all).
    output_fn: function of the model's output giving the tensor ``y`` the sensitivities use.
    chunk_size: samples per chunk of the streaming pass.
    seed: seeds every random draw of the run: ``"random"``'s scores, the subsample of
        ``"nonlinear"``, Hutchinson's probes and the allocation's sampled rows.
    add_bias: give bias-free layers a zero bias so they can be compensated (else an error).
    progress: tqdm bars (None: only on a terminal; never on ranks other than 0).
    shard: under ``torch.distributed``, treat ``data`` as the whole dataset, identical on every
        rank, and stream only this rank's share of it; ``False``: ``data`` is already this
        rank's shard. The sums are all-reduced either way.
    positions: how the sensitivities treat layers with several rows per sample (tokens, query
        points shared by all samples, repeated calls): ``"auto"`` (the one-row fast path where
        every layer has one row per sample, else the exact per-sample form for all layers),
        ``"exact"`` (the per-sample form everywhere) or ``"independent"`` (rows treated as
        samples, as SparseGPT and Wanda treat tokens: cheaper, approximate;
        :mod:`ecprune.engine.positions`).
    products: the dtype of the per-sample products ``H`` of that per-sample form: ``"model"``
        (the model's dtype) or ``"bfloat16"`` (faster on CPUs with bfloat16 instructions; the
        scores move by about 1e-4 of each layer's largest on 4,096 samples, by up to a few
        1e-3 on a few dozen: docs/performance.md).
    """

    layers: Iterable[str | nn.Module] | None = None
    output_fn: Callable[[object], torch.Tensor] | None = None
    chunk_size: int = 4096
    seed: int = 0
    add_bias: bool = False
    progress: bool | None = None
    shard: bool = True
    positions: str = "auto"
    products: str = "model"


RUN_OPTIONS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Options))


def parse_options(method: str | Method, options: dict, caller: str) -> tuple[Method, Options]:
    """The configured method and the run's :class:`Options` from an entry point's keywords.

    Unknown keywords are a TypeError listing the valid ones; a method option the method does
    not take is a TypeError naming the methods it belongs to.
    """
    if "pattern" in options:  # a keyword of prune and prune_by_importance only
        raise ValueError(
            f"{caller}() got pattern={options['pattern']!r}, but an N:M pattern applies when "
            "pruning: it is an option of ecprune.prune and ecprune.prune_by_importance, and "
            "the scores do not depend on it. It fixes the sparsity at 1 - N/M, so an error "
            "budget (prune_to_budget) cannot choose one: use ecprune.prune(..., pattern=...).")
    unknown = sorted(set(options) - set(RUN_OPTIONS) - set(METHOD_OPTIONS))
    if unknown:
        valid = [*RUN_OPTIONS, *METHOD_OPTIONS]
        raise TypeError(f"{caller}() got unknown option(s) {unknown}; valid options are {valid}.")
    run = {key: value for key, value in options.items() if key in RUN_OPTIONS}
    config = {key: value for key, value in options.items() if key not in RUN_OPTIONS}
    parsed = Options(**run)
    check_positive_int("chunk_size", parsed.chunk_size, caller=caller)
    check_choice("positions", parsed.positions, POSITIONS, caller=caller)
    check_choice("products", parsed.products, PRODUCTS, caller=caller)
    if not isinstance(method, str):  # an instance (options are then an error), or a mistake
        return get(method, caller=caller, **config), parsed
    check_choice("method", method, REGISTRY, caller=caller)
    # A method is configured for the scoring pass that every entry point runs: its options'
    # messages name importance.
    return get(method, caller="importance", **config), parsed
