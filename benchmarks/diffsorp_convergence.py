"""Does the diffusion-sorption protocol converge? Loss curves of the experiment's own training.

For both architectures and the noise levels ``--noise``, seed 0: the dense network trained
exactly as in ``ecprune reproduce diffsorp`` (its epochs and learning-rate decay), with the
training and test loss after every epoch; the same network trained with a schedule twice as
long, for comparison; and the ECP-pruned network (prune only -> fine-tuned, ratios
``--ratios``) fine-tuned as in the run and twice as long. Writes
``benchmarks/results/diffsorp_convergence.json`` and the figure
``docs/figures/diffsorp_convergence.png``.

Run: ``python benchmarks/diffsorp_convergence.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import ecprune
from ecprune.experiments.config import arch_name
from ecprune.experiments.diffsorp import DIFFSORP, load_diffsorp_split, noise_variant
from ecprune.experiments.job import FINETUNE_STREAM
from ecprune.experiments.stacked import StackedMLP, mlp
from ecprune.experiments.training import TrainSettings, evaluate, train


def curve(model: StackedMLP, split, settings: TrainSettings) -> list[list[float]]:
    """(train loss, test loss) of every network after every epoch."""
    points = []

    def record(_epoch: int) -> None:
        train_loss = evaluate(model, split.x_train, split.y_train, "mse")[0]
        test_loss = evaluate(model, split.x_test, split.y_test, "mse")[0]
        points.append([train_loss.tolist(), test_loss.tolist()])

    train(model, split.x_train, split.y_train, settings, on_epoch=record)
    return points


def settings(epochs: int, seed: int) -> TrainSettings:
    return TrainSettings(epochs=epochs, batch_size=DIFFSORP.batch_size, loss=DIFFSORP.loss,
                         seed=seed, lr=DIFFSORP.lr, lr_decay=DIFFSORP.lr_decay)


def study(widths, split, ratios) -> dict:
    dense = StackedMLP.from_models([mlp(widths, seed=0)])
    out = {"dense": curve(dense, split, settings(DIFFSORP.epochs, 0))}
    long = StackedMLP.from_models([mlp(widths, seed=0)])
    out["dense_double"] = curve(long, split, settings(2 * DIFFSORP.epochs, 0))
    network = dense.network(0)
    scores = ecprune.importance(network, split.x_train, "ecp", progress=False)
    pruned = []
    for ratio in ratios:
        copy = StackedMLP.from_models([network]).network(0)
        ecprune.prune_by_importance(copy, scores, ratio)
        pruned.append(copy)
    for key, epochs in (("finetune", DIFFSORP.finetune_epochs),
                        ("finetune_double", 2 * DIFFSORP.finetune_epochs)):
        out[key] = curve(StackedMLP.from_models(pruned), split,
                         settings(epochs, FINETUNE_STREAM))
    return out


def figure(record: dict, path: Path) -> None:
    runs = [(arch, noise) for arch, by_noise in record["runs"].items() for noise in by_noise]
    fig, axes = plt.subplots(2, len(runs), figsize=(3.6 * len(runs), 6.5), squeeze=False)
    for column, (arch, noise) in enumerate(runs):
        run = record["runs"][arch][noise]
        for row, keys in enumerate((("dense", "dense_double"), ("finetune", "finetune_double"))):
            ax = axes[row, column]
            for key, style in zip(keys, ("-", ":"), strict=True):
                for k, label in enumerate(["dense"] if row == 0 else
                                          [f"ECP r={r:g}" for r in record["ratios"]]):
                    test = [point[1][k] for point in run[key]]
                    ax.plot(range(1, len(test) + 1), test, style, color=f"C{k}",
                            label=f"{label}, {len(test)} epochs")
            floor = float(noise.removeprefix("noise=")) ** 2 / 3
            if floor:
                ax.axhline(floor, color="black", linewidth=0.8, label="noise floor d^2/3")
            ax.set(yscale="log", xlabel="epoch", ylabel="test loss",
                   title=f"{arch}, {noise}: {'dense' if row == 0 else 'fine-tune'}")
            ax.title.set_fontsize(8)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.01])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--figure", default="docs/figures/diffsorp_convergence.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = {"machine": platform.processor() or platform.machine(),
              "date": datetime.now(UTC).isoformat(timespec="minutes"),
              "protocol": {k: getattr(DIFFSORP, k) for k in ("epochs", "finetune_epochs",
                                                             "batch_size", "lr", "lr_decay")},
              "ratios": args.ratios, "curves": "per epoch: [train losses, test losses]",
              "runs": {}}
    for widths in DIFFSORP.architectures:
        for noise in args.noise:
            variant = noise_variant(noise)
            run = study(widths, load_diffsorp_split(variant), args.ratios)
            record["runs"].setdefault(arch_name(widths), {})[variant] = run
            last = {key: [f"{v:.3g}" for v in points[-1][1]] for key, points in run.items()}
            print(arch_name(widths), variant, "final test losses:", last, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "diffsorp_convergence.json").write_text(json.dumps(record))
    figure(record, Path(args.figure))


if __name__ == "__main__":
    main()
