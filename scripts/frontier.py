"""Issue 19's one-shot frontier, prune only: ``ecp-refit``, ``ecp-refit`` in 3 steps and
``sparsegpt`` against the methods that optimise the mask (``ecp-admm``, ``refine="swaps"``) and
the network's output (``objective="network"``), on three problems (``--dataset``):

- ``mnist``: 784-64-64-10, trained as ``ecprune reproduce beyond-mnist`` does (15 epochs of
  Adam, batch 128); test accuracy and cross-entropy;
- ``fashion-mnist``: 784-256-256-10, the same protocol on Fashion-MNIST (Debian package
  ``dataset-fashion-mnist``); test accuracy and cross-entropy;
- ``diffsorp``: the deep diffusion-sorption network 68-64-32-32-16-16-1 at noise 0.005,
  trained as the first ``beyond-diffsorp`` grid was (30 epochs, ``DIFFSORP_SHORT``; before
  the convergence study of docs/diffsorp.md); test MSE against the noisy targets
  (``loss``) and against the clean solver values (``loss_clean``; ``accuracy`` is empty).

Each seed's dense network is pruned by a copy per (label, ratio) with ``ecprune.prune`` on the
whole training set; the script prints the test metrics, the seconds and the cost in gradient
passes (the seconds divided by one gradient pass over the training set, median of 3, measured
in the same run).

Run: ``.venv/bin/python scripts/frontier.py --dataset mnist --seeds 0 1 2 3 4`` (one thread;
``--cache DIR`` keeps the dense networks between runs). ``--csv PATH`` appends every cell as
it is computed and skips the cells it already holds (a killed run resumes, losing at most the
cell in progress); ``--summarize A.csv B.csv`` prints the table of several runs and
``--pairs A:B`` adds paired differences with p-values.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import ecprune
from ecprune.data.datasets import load_fashion_mnist
from ecprune.experiments.beyond import BEYOND_DIFFSORP, BEYOND_MNIST
from ecprune.experiments.config import ExperimentConfig
from ecprune.experiments.diffsorp import DIFFSORP_SHORT, load_dataset, noise_variant
from ecprune.experiments.job import Job, Split, train_dense
from ecprune.experiments.mnist import load_mnist_split
from ecprune.experiments.stacked import mlp
from ecprune.experiments.training import gradient_pass_seconds

# label: (method, steps, options)
LABELS = {
    "ecp-refit": ("ecp-refit", 1, {}),
    "ecp-refit-steps3": ("ecp-refit", 3, {}),
    "ecp-refit-global": ("ecp-refit", 1, {"allocation": "global"}),
    "sparsegpt": ("sparsegpt", 1, {}),
    "ecp-refit-swaps": ("ecp-refit", 1, {"refine": "swaps"}),
    "ecp-admm": ("ecp-admm", 1, {}),
    "ecp-admm-swaps": ("ecp-admm", 1, {"refine": "swaps"}),
    "ecp-refit-network": ("ecp-refit", 1, {"objective": "network"}),
    "ecp-admm-network": ("ecp-admm", 1, {"objective": "network"}),
    "ecp-admm-swaps-network": ("ecp-admm", 1, {"refine": "swaps", "objective": "network"}),
    "ecp-admm-swaps-steps3": ("ecp-admm", 3, {"refine": "swaps"}),
    "ecp-admm-swaps-loss": ("ecp-admm", 1, {"refine": "swaps", "objective": "loss"}),
    "ecp-admm-swaps-network-steps3": ("ecp-admm", 3, {"refine": "swaps",
                                                      "objective": "network"}),
}
# Semi-structured 2:4 (issue 16) against the same methods unstructured at r = 0.5.
PATTERN_METHODS = ("magnitude", "wanda", "ecp", "sparsegpt", "ecp-refit", "sparsegpt-refit")
LABELS |= {method: (method, 1, {}) for method in PATTERN_METHODS if method not in LABELS}
LABELS |= {f"{method}-2:4": (method, 1, {"pattern": "2:4"}) for method in PATTERN_METHODS}
DEFAULT_LABELS = ["ecp-refit", "ecp-refit-steps3", "sparsegpt", "ecp-refit-swaps", "ecp-admm",
                  "ecp-admm-swaps", "ecp-admm-swaps-network"]
RATIOS = (0.9, 0.95)
# The labels that take --option (the new methods under tuning).
NEW_METHODS = [label for label in LABELS if label.startswith(("ecp-admm", "ecp-refit-"))
               and not label.endswith(("steps3", "2:4"))]


@dataclass(frozen=True)
class Problem:
    """One data set of the frontier: its training protocol, network and test metrics."""

    config: ExperimentConfig
    widths: tuple[int, ...]
    variant: str
    load: Callable[[], tuple[Split, torch.Tensor | None]]  # the split, clean test targets

    @property
    def classification(self) -> bool:
        return self.config.loss == "cross_entropy"


def _mnist() -> tuple[Split, None]:
    return load_mnist_split(), None


def _fashion_mnist() -> tuple[Split, None]:
    return Split(*load_fashion_mnist().tensors()), None


def _diffsorp() -> tuple[Split, torch.Tensor]:
    ds = load_dataset(DIFFSORP_VARIANT)
    return (Split(ds.train_inputs, ds.train_targets, ds.test_inputs, ds.test_targets),
            ds.test_targets_clean)


DIFFSORP_VARIANT = noise_variant(0.005)
PROBLEMS = {
    "mnist": Problem(BEYOND_MNIST, (784, 64, 64, 10), "", _mnist),
    "fashion-mnist": Problem(replace(BEYOND_MNIST, name="frontier-fashion-mnist"),
                             (784, 256, 256, 10), "", _fashion_mnist),
    # The 30-epoch networks of the first grid (DIFFSORP_SHORT), as when docs/beyond.md's
    # frontier was measured.
    "diffsorp": Problem(replace(BEYOND_DIFFSORP, epochs=DIFFSORP_SHORT.epochs),
                        (68, 64, 32, 32, 16, 16, 1), DIFFSORP_VARIANT, _diffsorp),
}


@torch.no_grad()
def test_metrics(problem: Problem, model: torch.nn.Module, split: Split,
                 clean: torch.Tensor | None) -> dict[str, float | str]:
    """Classification: test accuracy and mean cross-entropy; regression: test MSE against
    the noisy targets and against the clean ones."""
    out = torch.cat([model(chunk) for chunk in split.x_test.split(4096)]).double()
    if problem.classification:
        return {"accuracy": float((out.argmax(1) == split.y_test).double().mean()),
                "loss": float(F.cross_entropy(out, split.y_test)), "loss_clean": ""}
    return {"accuracy": "", "loss": float(F.mse_loss(out, split.y_test.double())),
            "loss_clean": float(F.mse_loss(out, clean.double()))}


def dense_network(problem: Problem, seed: int, split: Split,
                  cache: Path | None) -> torch.nn.Module:
    name = f"{problem.config.name}{problem.variant}-{'-'.join(map(str, problem.widths))}"
    path = None if cache is None else cache / f"{name}-{seed}.pt"
    if path is not None and path.exists():
        model = mlp(problem.widths, seed=seed)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    model, _ = train_dense(problem.config, Job(problem.variant, problem.widths, seed), split)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def parse_value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(PROBLEMS), default="mnist")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs of the dense networks (default: the protocol's; "
                        "fewer for a smoke run, with no --cache)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--ratios", type=float, nargs="*", default=list(RATIOS))
    parser.add_argument("--labels", nargs="*", default=DEFAULT_LABELS, choices=list(LABELS))
    parser.add_argument("--option", action="append", default=[],
                        help="KEY=VALUE added to every new method's options (tuning)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--pairs", nargs="*", default=[], metavar="A:B",
                        help="labels to compare, paired over seeds")
    parser.add_argument("--summarize", type=Path, nargs="*", default=None,
                        help="only print the table of these CSVs (several runs, e.g. one per "
                        "seed)")
    args = parser.parse_args()
    if args.summarize:
        rows = [row for path in args.summarize for row in read_rows(path)]
        summarize(rows, sorted({row["ratio"] for row in rows}), args.pairs)
        return
    torch.set_num_threads(args.threads)
    extra = dict(item.split("=", 1) for item in args.option)
    problem = PROBLEMS[args.dataset]
    if args.epochs is not None:
        problem = replace(problem, config=replace(problem.config, epochs=args.epochs))
    split, clean = problem.load()
    data = TensorDataset(split.x_train, split.y_train)
    rows = read_rows(args.csv) if args.csv is not None and args.csv.exists() else []
    done = {(row["seed"], row["label"], row["ratio"]) for row in rows}
    for seed in args.seeds:
        todo = [(label, ratio) for label in args.labels for ratio in args.ratios
                if (seed, label, ratio) not in done]
        if not todo:
            continue
        dense = dense_network(problem, seed, split, args.cache)
        unit = gradient_pass_seconds(dense, split.x_train, split.y_train, problem.config.loss)
        print(f"seed {seed}: dense {format_metrics(test_metrics(problem, dense, split, clean))}"
              f"; gradient pass {unit:.3f} s", flush=True)
        for label, ratio in todo:
            method, steps, options = LABELS[label]
            if label in NEW_METHODS:
                options = {**options, **{k: parse_value(v) for k, v in extra.items()}}
            pruned = copy.deepcopy(dense)
            start = time.perf_counter()
            ecprune.prune(pruned, data, ratio, method, steps=steps, progress=False, **options)
            seconds = time.perf_counter() - start
            metrics = test_metrics(problem, pruned, split, clean)
            row = {"seed": seed, "label": label, "ratio": ratio, **metrics,
                   "seconds": seconds, "passes": seconds / unit}
            rows.append(row)
            if args.csv is not None:
                append_row(args.csv, row)
            print(f"  {label:32s} r={ratio:<5} {format_metrics(metrics)} "
                  f"{seconds:6.2f} s {seconds / unit:6.1f} passes", flush=True)
    summarize([row for row in rows if row["seed"] in args.seeds and row["label"] in args.labels
               and row["ratio"] in args.ratios], args.ratios, args.pairs)


FIELDS = ("seed", "label", "ratio", "accuracy", "loss", "loss_clean", "seconds", "passes")


def read_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return [{k: parse_value(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def append_row(path: Path, row: dict) -> None:
    """One cell more in ``path`` (written at once: a killed run loses only the cell in
    progress)."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()


def number(key: str, value: float) -> str:
    """Accuracies to 4 decimals, losses to 4 significant digits."""
    return f"{value:.4f}" if key == "accuracy" else f"{value:.4g}"


def format_metrics(metrics: dict) -> str:
    return " ".join(f"{key} {number(key, value)}" for key, value in metrics.items()
                    if value != "")


def summarize(rows: list[dict], ratios: list[float], pairs: list[str] = ()) -> None:
    """Mean over seeds of every label's metrics per ratio; per ``"A:B"`` of ``pairs``, the
    mean paired difference A - B over the seeds both have, with a two-sided paired t-test."""
    seeds = sorted({row["seed"] for row in rows})
    metrics = [key for key in ("accuracy", "loss", "loss_clean")
               if any(row.get(key, "") != "" for row in rows)]
    print(f"\nMean over seeds {seeds}: {', '.join(metrics)} [gradient passes]")
    print("| label | " + " | ".join(f"r = {r}" for r in ratios) + " |")
    print("| --- |" + " --- |" * len(ratios))
    for label in dict.fromkeys(row["label"] for row in rows):
        cells = []
        for ratio in ratios:
            found = [row for row in rows if row["label"] == label and row["ratio"] == ratio]
            values = [number(key, statistics.mean(row[key] for row in found))
                      for key in metrics]
            passes = statistics.mean(row["passes"] for row in found)
            cells.append(f"{' / '.join(values)} [{passes:.1f}]")
        print(f"| {label} | " + " | ".join(cells) + " |")
    labels = {row["label"] for row in rows}
    for pair in pairs:
        first, second = split_pair(pair, labels)
        print(f"\n{first} - {second}: mean paired difference (p, paired t-test)")
        print("| metric | " + " | ".join(f"r = {r}" for r in ratios) + " |")
        print("| --- |" + " --- |" * len(ratios))
        for key in metrics:
            cells = [paired_difference(rows, first, second, ratio, key) for ratio in ratios]
            print(f"| {key} | " + " | ".join(cells) + " |")


def split_pair(pair: str, labels: set[str]) -> tuple[str, str]:
    """``"A:B"`` as ``(A, B)``, at the colon where both sides are labels (labels such as
    ``ecp-2:4`` hold colons themselves)."""
    for k, char in enumerate(pair):
        if char == ":" and pair[:k] in labels and pair[k + 1:] in labels:
            return pair[:k], pair[k + 1:]
    raise SystemExit(f"--pairs {pair!r}: expected two labels of the results as A:B, from "
                     f"{sorted(labels)}")


def paired_difference(rows: list[dict], first: str, second: str, ratio: float,
                      key: str) -> str:
    from scipy import stats

    by_seed = {label: {row["seed"]: row[key] for row in rows
                       if row["label"] == label and row["ratio"] == ratio}
               for label in (first, second)}
    seeds = sorted(set(by_seed[first]) & set(by_seed[second]))
    a, b = ([by_seed[label][s] for s in seeds] for label in (first, second))
    difference = statistics.mean(x - y for x, y in zip(a, b, strict=True))
    with warnings.catch_warnings():  # nearly identical samples: scipy warns, still answers
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_rel(a, b).pvalue if len(seeds) > 1 else float("nan")
    return f"{difference:+.4g} ({p:.3g}, n={len(seeds)})"


if __name__ == "__main__":
    main()
