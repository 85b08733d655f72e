"""``ecprune prune``: a user's model and data in, a pruned model, a JSON report and a table out.

Nothing is written until everything has been computed, and existing files are never replaced
without ``--force``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import ecprune
from ecprune import distributed, methods
from ecprune.engine.layers import copy_model, model_dtype_device, select_layers
from ecprune.engine.positions import POSITIONS, PRODUCTS
from ecprune.engine.tape import LayerTape, eval_mode, forward
from ecprune.masking.selection import SCOPES
from ecprune.methods import LOSSES
from ecprune.structured import registry as neuron_registry
from ecprune.structured.selection import SCOPES as NEURON_SCOPES

from .command import add_command
from .data_files import FORMATS, LoadedData, load_data
from .loading import is_factory_spec, load_model
from .pattern import add_pattern_option, check_amount
from .prune_output import Outputs, build_report, format_table, plan_outputs, write_outputs

EPILOG = """examples:
  # a model saved with torch.save(model): loading it runs code from the file, hence the flag
  ecprune prune model.pt inputs.npy --trust-model --sparsity 0.9 -o pruned.pt

  # an architecture from your code plus a state dict (nothing is unpickled)
  ecprune prune mymodels:make_mlp --path . --weights weights.pt data.npz --sparsity 0.8

  # remove half of the hidden units: a smaller dense model, saved whole (its widths changed)
  ecprune prune model.pt inputs.npy --trust-model --neurons 0.5 -o small.pt

  # remove as many weights as keep ECP's predicted relative output error under 1%
  ecprune prune model.pt inputs.npy --trust-model --error-budget 0.01 --compact

  # the same on 2 processes (torch.distributed): each scores half of the data
  torchrun --standalone --nproc-per-node 2 -m ecprune prune model.pt inputs.npy \\
      --trust-model --sparsity 0.9 -o pruned.pt

  # gradient baseline: targets from a CSV column, on a random 5000-sample subset
  ecprune prune model.pt train.csv --trust-model --method gradient --target-column label \\
      --max-samples 5000 --sparsity 0.5 -o grad.pt --force

data formats: .pt (a tensor, {'inputs', 'targets'} dict or (inputs, targets) tuple),
.npy (inputs), .npz (arrays 'inputs' and optionally 'targets'), .csv (numbers, optional
header row; --target-column picks the targets). Targets are only needed by --method gradient.
"""


@dataclass(frozen=True)
class Pruned:
    """What the pruning step produced."""

    report: ecprune.PruneReport
    measured: ecprune.OutputError
    seconds: dict[str, float]


# Method options of the command line: flag destination -> keyword option of ecprune.prune.
METHOD_FLAGS = ("loss", "nonlinear_samples", "allocation", "sensitivity", "probes", "damping",
                "block_size", "refit_weighting")


def build_method(args: argparse.Namespace) -> methods.Method:
    """The configured method of ``--method`` and the method options given on the command line."""
    if args.method not in ecprune.METHODS:
        raise ValueError(f"Unknown --method {args.method!r}; choose one of "
                         f"{', '.join(ecprune.METHODS)}.")
    return methods.get(args.method, caller="ecprune prune",
                       **{flag: getattr(args, flag) for flag in METHOD_FLAGS})


def neuron_method(args: argparse.Namespace):
    """``--neurons``: the unit-removal method of ``--method`` and its options."""
    if not 0 <= args.neurons < 1:
        raise ValueError(f"--neurons must be in [0, 1); got {args.neurons}.")
    for flag, given in (("--steps", args.steps != 1), ("--compact", args.compact),
                        ("--positions", args.positions != "auto"),
                        ("--products", args.products != "model")):
        if given:
            raise ValueError(f"--neurons removes whole units in one step and writes the smaller "
                             f"model; drop {flag}.")
    if args.scope not in NEURON_SCOPES:
        raise ValueError(f"--neurons takes --scope {' or '.join(NEURON_SCOPES)}; got "
                         f"{args.scope!r}.")
    if args.method not in ecprune.NEURON_METHODS:
        raise ValueError(f"Unknown --method {args.method!r} with --neurons; choose one of "
                         f"{', '.join(ecprune.NEURON_METHODS)}.")
    return neuron_registry.get(args.method, caller="ecprune prune --neurons",
                               **{flag: getattr(args, flag) for flag in METHOD_FLAGS})


def check_arguments(args: argparse.Namespace) -> None:
    """Fail on inconsistent options before loading anything; sets ``args.pruner``, the method."""
    check_amount(args)
    if args.method is None:
        args.method = "ecp" if args.neurons is None else "ecp-refit"
    args.pruner = build_method(args) if args.neurons is None else neuron_method(args)
    if args.pattern is None and args.scope not in SCOPES:
        raise ValueError(f"Unknown --scope {args.scope!r}; choose one of {', '.join(SCOPES)}.")
    if args.error_budget is not None:
        if not args.pruner.predicts_error:
            valid = methods.names(predicts_error=True)
            raise ValueError(f"--error-budget needs a method that predicts the output error "
                             f"({', '.join(valid)}); --method {args.method} does not. Pass "
                             "--sparsity instead.")
        if args.scope != "global":
            raise ValueError("--error-budget ranks all layers together; drop --scope layer.")
        if args.steps > 1:
            raise ValueError("--error-budget prunes in one step; drop --steps.")
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        raise ValueError(f"--sparsity must be in [0, 1); got {args.sparsity}.")
    if args.error_budget is not None and not 0 <= args.error_budget < math.inf:
        raise ValueError(f"--error-budget must be a finite number >= 0; got {args.error_budget}.")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"Unknown --device {args.device!r}; expected e.g. cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch finds no CUDA device on this machine.")
    if device.type == "meta":
        raise ValueError("--device meta holds shapes but no numbers, so nothing can be scored "
                         "on it; use --device cpu or cuda.")
    if not 0 < args.dist_timeout < math.inf:
        raise ValueError(f"--dist-timeout must be a positive number of seconds; got "
                         f"{args.dist_timeout}.")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}.")
    if args.max_samples is not None and args.max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1; got {args.max_samples}.")


def check_fits(model: nn.Module, data: LoadedData, layers: dict[str, nn.Linear]) -> None:
    """Run two samples through the model, so a data width that does not fit fails early."""
    dtype, device = model_dtype_device(model)
    sample = data.inputs[:2].to(device=device, dtype=dtype)
    with torch.no_grad(), eval_mode(model), LayerTape(layers, differentiable=False):
        forward(model, sample, None)


def prune_model(model: nn.Module, data: LoadedData, args: argparse.Namespace) -> Pruned:
    """Score, prune (to ``--sparsity`` or ``--error-budget``), bake the masks, measure."""
    dense = copy_model(model)
    dataset = data.inputs if data.targets is None else TensorDataset(data.inputs, data.targets)
    options = dict(layers=args.layers, chunk_size=args.chunk_size, seed=args.seed,
                   add_bias=args.add_bias, positions=args.positions, products=args.products,
                   progress=False if args.quiet else None)
    start = time.perf_counter()
    if args.steps > 1 or args.pruner.rereads_data:  # more passes over the data after scoring
        report = ecprune.prune(model, dataset, args.sparsity, args.pruner, args.scope,
                               steps=args.steps, pattern=args.pattern, **options)
        scoring = report.scoring_seconds
    else:
        scores = ecprune.importance(model, dataset, args.pruner, **options)
        scoring, sparsity = scores.seconds, args.sparsity
        if args.error_budget is not None:
            sparsity = ecprune.budget_sparsity(model, scores, args.error_budget).sparsity
        report = ecprune.prune_by_importance(model, scores, sparsity, args.scope,
                                             add_bias=args.add_bias, pattern=args.pattern)
    ecprune.bake_masks(model)
    empty = [name for name, layer in report.layers.items() if layer.kept == 0]
    if empty and distributed.is_main_process():
        print(f"ecprune prune: warning: every weight of layer(s) {empty} was removed; the model "
              "no longer depends on what feeds them.", file=sys.stderr)
    pruning = time.perf_counter() - start - scoring
    measured = ecprune.output_error(dense, model, data.inputs, chunk_size=args.chunk_size,
                                    progress=options["progress"])
    seconds = {"scoring": scoring, "pruning": pruning,
               "measuring": time.perf_counter() - start - scoring - pruning}
    return Pruned(report=report, measured=measured, seconds=seconds)


def compact_model(model: nn.Module, data: LoadedData) -> tuple[nn.Module, dict]:
    """The compacted model and what the report says about it."""
    small = ecprune.compact(model)
    dtype, device = model_dtype_device(model)
    with torch.no_grad(), eval_mode(model), eval_mode(small):
        x = data.inputs[:1024].to(device=device, dtype=dtype)
        change = (small(x) - model(x)).abs().max().item()
    info = {"dense_shapes": ecprune.layer_shapes(model),
            "compact_shapes": ecprune.layer_shapes(small),
            "max_abs_output_change": change}
    return small, info


def run(args: argparse.Namespace) -> int:
    """Under ``torchrun`` every rank loads the same files and scores its share of the data;
    rank 0 alone writes and prints."""
    check_arguments(args)
    args.device = distributed.local_device(args.device)
    created = distributed.init_from_environment(args.device, timeout_seconds=args.dist_timeout)
    try:
        return prune_and_write(args)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def prune_and_write(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    outputs: Outputs = plan_outputs(args.output, args.report, force=args.force)
    model = load_model(args.model, weights=args.weights, trust=args.trust_model, paths=args.path)
    if is_factory_spec(args.model) and args.weights is None and distributed.is_main_process():
        print(f"ecprune prune: warning: no --weights for MODEL {args.model}: pruning the "
              "factory's freshly initialised (untrained) weights.", file=sys.stderr)
    model = model.to(args.device)
    data = load_data(args.data, target_column=args.target_column,
                     max_samples=args.max_samples, seed=args.seed)
    if args.neurons is not None:
        return write_neurons(args, model, data, outputs, start)
    if args.pruner.needs_targets and data.targets is None:
        raise ValueError(f"--method {args.method} needs targets: store them under 'targets' in a "
                         ".pt/.npz file, or pick a CSV column with --target-column.")
    if args.loss == "cross_entropy" and data.targets is not None:
        data = LoadedData(data.inputs, data.targets.long(), data.available)
    check_fits(model, data, select_layers(model, args.layers))
    loaded = time.perf_counter() - start
    pruned = prune_model(model, data, args)
    shapes = ecprune.layer_shapes(model)
    saved, compaction = model, None
    if args.compact:
        saved, compaction = compact_model(model, data)
    fmt = "state_dict" if is_factory_spec(args.model) and not args.compact else "module"
    seconds = {"loading": loaded, **pruned.seconds, "total": time.perf_counter() - start}
    result = build_report(args, data, pruned.report, pruned.measured, shapes=shapes,
                          seconds=seconds,
                          compaction=compaction, outputs=outputs, model_format=fmt)
    if distributed.is_main_process():
        write_outputs(outputs, saved.cpu(), result, model_format=fmt, force=args.force)
        if not args.quiet:
            print(format_table(result))
    return 0


def write_neurons(args: argparse.Namespace, model: nn.Module, data: LoadedData,
                  outputs: Outputs, start: float) -> int:
    """``--neurons``: remove units (:func:`ecprune.prune_neurons`, one process), write the
    smaller model as a whole module and the report, which holds the new widths."""
    if distributed.is_distributed():
        raise ValueError("--neurons runs in one process; run it without torchrun.")
    check_fits(model, data, select_layers(model, args.layers))
    try:
        report = ecprune.prune_neurons(model, data.inputs, args.neurons, args.pruner,
                                       args.scope, layers=args.layers, seed=args.seed,
                                       chunk_size=args.chunk_size, add_bias=args.add_bias,
                                       progress=False if args.quiet else None)
    except ImportError as err:  # torch-pruning missing: one line, as every user error
        raise ValueError(str(err)) from err
    result = {"ecprune_version": ecprune.__version__,
              "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": shlex.join(["ecprune", *args.argv]), "model": args.model,
              "data": str(args.data), "samples": len(data.inputs),
              "requested": {"neurons": args.neurons}, **report.to_dict(),
              "total_seconds": time.perf_counter() - start,
              "outputs": {"model": str(outputs.model), "model_format": "module",
                          "report": str(outputs.report)}}
    write_outputs(outputs, model.cpu(), result, model_format="module", force=args.force)
    if not args.quiet:
        print(f"{ecprune.structured.format_table(report)}\nwrote {outputs.model} (module), "
              f"{outputs.report}")
    return 0


def _layers(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--target-column", metavar="NAME|INDEX",
                       help="CSV column holding the targets (header name or 0-based index)")
    group.add_argument("--max-samples", type=int, metavar="N",
                       help="use a random subset of N samples (seeded by --seed)")
    group.add_argument("--chunk-size", type=int, default=4096, metavar="N",
                       help="samples per chunk of the streaming passes (default: 4096)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--weights", metavar="FILE",
                       help="state dict to load into the model built by MODEL=module:factory")
    group.add_argument("--trust-model", action="store_true",
                       help="allow MODEL to be a whole pickled module (loading it runs code "
                            "from the file)")
    group.add_argument("--path", action="append", default=[], metavar="FOLDER",
                       help="folder to import the factory's module (or the pickled model's "
                            "classes) from; repeatable")
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    group.add_argument("--dist-timeout", type=float, default=600, metavar="SECONDS",
                       help="under torchrun: how long a rank waits for the others before "
                            "failing (default: 600)")


def _add_pruning_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pruning")
    amount = group.add_mutually_exclusive_group()
    amount.add_argument("--sparsity", type=float, metavar="R",
                        help="fraction of the weights to remove, in [0, 1)")
    amount.add_argument("--error-budget", type=float, metavar="BUDGET",
                        help="remove as many weights as keep the predicted relative output "
                             "error sum(I) / E||y||^2 <= BUDGET (global scope)")
    amount.add_argument("--neurons", type=float, metavar="F",
                        help="remove this fraction of the hidden units instead "
                             "(ecprune.prune_neurons): the output is a smaller dense model, "
                             "saved whole, and the report holds its widths; --method "
                             f"{', '.join(ecprune.NEURON_METHODS)} (default: ecp-refit)")
    group.add_argument("--method",
                       help=f"one of {', '.join(ecprune.METHODS)} (default: ecp; with "
                            "--neurons: ecp-refit)")
    add_pattern_option(group)
    group.add_argument("--scope",
                       help="global (one ranking over all layers, default), layer or row")
    group.add_argument("--steps", type=int, default=1, metavar="K",
                       help="reach --sparsity in K prunings, re-scoring the pruned model each "
                            "time (default: 1). ecp-refit and sparsegpt update the kept weights")
    group.add_argument("--allocation", choices=["global", "refit"],
                       help="how many weights each layer loses under --scope global: global "
                            "(the scores' global ranking) or refit (ecp-refit only: the counts "
                            "that minimise the error left after the refit; its default)")
    group.add_argument("--layers", type=_layers, metavar="NAMES",
                       help="comma-separated names of the Linear layers to prune (default: all)")
    group.add_argument("--loss", choices=sorted(LOSSES),
                       help="loss of --method gradient (default: cross_entropy for integer "
                            "targets, mse otherwise)")
    group.add_argument("--add-bias", action="store_true",
                       help="give bias-free Linear layers a zero bias so they can be compensated")
    group.add_argument("--nonlinear-samples", type=int, metavar="N",
                       help="inputs over which --method nonlinear averages (default: 1024)")
    group.add_argument("--sensitivity", choices=["auto", "exact", "hutchinson"],
                       help="how the methods that read ECP's sensitivities get them (ecp, "
                            "ecp-nocomp, ecp-refit, sparsegpt, sparsegpt-refit; default: auto)")
    group.add_argument("--probes", type=int, metavar="N",
                       help="Hutchinson probes per sample (default: 8)")
    group.add_argument("--positions", choices=list(POSITIONS), default="auto",
                       help="layers with several rows per sample (tokens, query points, "
                            "repeated calls): auto (exact per-sample sums where needed, "
                            "default), exact (force them) or independent (rows treated as "
                            "samples, faster and approximate)")
    group.add_argument("--products", choices=list(PRODUCTS), default="model",
                       help="dtype of the per-sample products of --positions exact/auto: model "
                            "(default) or bfloat16 (faster on CPUs with bf16 instructions)")
    group.add_argument("--damping", type=float, metavar="D",
                       help="relative ridge of the Gram matrices of ecp-refit, sparsegpt and "
                            "sparsegpt-refit (default: 0.01)")
    group.add_argument("--block-size", type=int, metavar="N",
                       help="columns per block of sparsegpt and sparsegpt-refit (default: 128)")
    group.add_argument("--refit-weighting", choices=["plain", "sensitivity"],
                       help="least squares of ecp-refit and sparsegpt-refit: plain or weighted "
                            "by ECP's sensitivities (default: plain)")
    group.add_argument("--seed", type=int, default=0,
                       help="seed of --max-samples, --method random and nonlinear (default: 0)")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-o", "--output", default="pruned.pt", metavar="FILE",
                       help="pruned model, masks baked in (default: pruned.pt)")
    group.add_argument("--report", metavar="FILE",
                       help="JSON report (default: the output's name with .json)")
    group.add_argument("--compact", action="store_true",
                       help="remove dead neurons; the output holds the smaller model")
    group.add_argument("--force", action="store_true", help="overwrite existing output files")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bars and no table")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "prune", run,
        help="prune your model on your data; write the model and a report",
        description="Prune the nn.Linear weights of MODEL, scored on the inputs in DATA, and\n"
                    "write the pruned model (masks baked in), a JSON report and a table.",
        epilog=EPILOG,
    )
    parser.add_argument("model", metavar="MODEL",
                        help="file saved with torch.save(model) (needs --trust-model), or "
                             "package.module:factory / file.py:factory (with --weights)")
    parser.add_argument("data", metavar="DATA", type=Path,
                        help=f"inputs (and optional targets): {', '.join(FORMATS)}")
    _add_model_options(parser)
    _add_data_options(parser)
    _add_pruning_options(parser)
    _add_output_options(parser)
