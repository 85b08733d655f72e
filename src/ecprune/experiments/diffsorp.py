"""The paper's diffusion-sorption experiment (ECP.md, section 5): settings, data, snapshots.

The data are :func:`ecprune.data.diffsorp_dataset` (samples 0-99, 10 times, 64 cells, input
width 68, noise ``U(-d, d)`` on the targets; docs/diffsorp-data.md). Each noise level ``d`` is
one variant of the experiment, named ``noise=<d>``. The split and the noise draw use data seed
0 for every job, so the seeds of the grid vary the network initialisation and batch order only.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch

from ..data.diffsorp import NOISE_LEVELS, DiffSorpDataset, diffsorp_dataset
from ..data.pde import diffusion_sorption
from .config import ExperimentConfig
from .job import FINETUNE_STREAM, Job, JobRunner, Split
from .stacked import StackedMLP
from .store import CsvStore, ResultsStore
from .training import train

ARCHITECTURES = ((68, 32, 32, 32, 1), (68, 64, 32, 32, 16, 16, 1))
VARIANT_PREFIX = "noise="
DATA_SEED = 0


def noise_variant(noise: float) -> str:
    """``0.005`` -> ``"noise=0.005"``."""
    return f"{VARIANT_PREFIX}{float(noise):g}"


def variant_noise(variant: str) -> float:
    """``"noise=0.005"`` -> ``0.005``."""
    value = variant.removeprefix(VARIANT_PREFIX)
    try:
        if variant.startswith(VARIANT_PREFIX):
            return float(value)
    except ValueError:
        pass
    raise ValueError(f"Unknown diffusion-sorption variant {variant!r}; expected "
                     f"'{VARIANT_PREFIX}<d>' such as {noise_variant(0.005)!r}.")


# The first grid's schedule, 30 + 10 epochs, fixed by the time budget before the convergence
# study (docs/diffsorp.md, "Under-trained networks"). The neuron experiment and the frontier's
# diffusion-sorption networks were run with it and keep it.
DIFFSORP_SHORT = ExperimentConfig(
    name="diffsorp",
    architectures=ARCHITECTURES,
    variants=tuple(noise_variant(d) for d in NOISE_LEVELS),
    epochs=30,
    finetune_epochs=10,
    batch_size=128,
    loss="mse",
    lr=1e-3,
    lr_decay=0.1,
)
# The schedule the convergence study chose (docs/diffsorp.md, "Convergence study"): E epochs of
# training, the learning rate decayed from 1e-3 to 1e-4 over them, and as many of fine-tuning.
CONVERGED_EPOCHS = 240
DIFFSORP = replace(DIFFSORP_SHORT, epochs=CONVERGED_EPOCHS, finetune_epochs=CONVERGED_EPOCHS)

# The deeper architecture (the snapshot figure's), one seed, three ratios, 1 + 1 epochs, two
# noise levels: the whole pipeline in under a minute once the PDE data are cached.
DIFFSORP_QUICK = replace(DIFFSORP, architectures=ARCHITECTURES[1:], seeds=(0,),
                         variants=DIFFSORP.variants[::2], ratios=(0.5, 0.7, 0.9), epochs=1,
                         finetune_epochs=1, nonlinear_samples=256)


def load_dataset(variant: str, *, data_dir: str | Path | None = None) -> DiffSorpDataset:
    """The data set of one variant; ``data_dir``: the PDE solutions' cache directory."""
    noise = variant_noise(variant)
    data = diffusion_sorption(range(100), cache_dir=data_dir, progress=False)
    return diffsorp_dataset(noise=noise, seed=DATA_SEED, data=data)


def dataset_split(ds: DiffSorpDataset) -> Split:
    """The :class:`Split` of ``ds``, with its clean test targets (``test_loss_clean``)."""
    return Split(ds.train_inputs, ds.train_targets, ds.test_inputs, ds.test_targets,
                 ds.test_targets_clean)


def load_diffsorp_split(variant: str = noise_variant(0.0), *,
                        data_dir: str | Path | None = None) -> Split:
    """Standardised inputs (rows, 68), noisy targets (rows, 1) and the clean test targets,
    split by sample."""
    return dataset_split(load_dataset(variant, data_dir=data_dir))


def pruned_predictions(config: ExperimentConfig, job: Job, split: Split, *, method: str,
                       ratio: float, workdir: Path) -> dict[str, torch.Tensor]:
    """Test predictions of ``job``'s dense network, of it pruned by ``method`` at ``ratio``
    and of that fine-tuned, each trained exactly as in the run (same code, seeds, epochs).

    ``workdir`` receives the job's scratch stores and checkpoints.
    """
    runner = JobRunner(config, job, split, results=ResultsStore(workdir / "rows.csv"),
                       timings=CsvStore(workdir / "timings.csv", ("unit",)),
                       checkpoints=workdir, done=set())
    runner.checkpoints.mkdir(parents=True, exist_ok=True)
    dense = runner.dense()
    pruned = runner.pruned(dense, runner.importances(dense, method), ratio)
    tuned = StackedMLP.from_models([copy.deepcopy(pruned)])
    train(tuned, split.x_train, split.y_train,
          runner.settings(config.finetune_epochs, FINETUNE_STREAM))
    with torch.no_grad():
        return {"dense": dense(split.x_test), "prune": pruned(split.x_test),
                "finetune": tuned(split.x_test)[0]}


SNAPSHOT_METHOD, SNAPSHOT_RATIO = "ecp", 0.7
SNAPSHOT_TIMES = (0, 3, 6, 9)  # of the 10 stored times: t = 50, 200, 350, 500


def snapshot_figures(config: ExperimentConfig, out: str | Path, *,
                     data_dir: str | Path | None = None, trajectory: int = 0) -> list[Path]:
    """The paper's snapshot figure: noisy data of an unseen test trajectory against the
    predictions of the deeper architecture (the last of ``config``), seed ``config.seeds[0]``,
    dense and pruned by ECP at r = 0.7 (prune only and fine-tuned), one row per noise level."""
    import tempfile

    from ..plots import SnapshotRow, snapshot_figure

    widths = max(config.architectures, key=len)
    rows = []
    for variant in config.variants:
        ds = load_dataset(variant, data_dir=data_dir)
        split = dataset_split(ds)
        with tempfile.TemporaryDirectory() as workdir:
            predictions = pruned_predictions(config, Job(variant, widths, config.seeds[0]),
                                             split, method=SNAPSHOT_METHOD,
                                             ratio=SNAPSHOT_RATIO, workdir=Path(workdir))
        shape = (len(ds.test_samples), len(ds.times), len(ds.x))
        labels = {"dense": "dense", "prune": f"ECP r={SNAPSHOT_RATIO:g}, prune only",
                  "finetune": f"ECP r={SNAPSHOT_RATIO:g}, + fine-tune"}
        rows.append(SnapshotRow(
            title=f"sample {ds.test_samples[trajectory]}, d = {variant_noise(variant):g}",
            x=ds.x, times=ds.times, data=ds.test_targets.reshape(shape)[trajectory].numpy(),
            predictions={labels[k]: v.reshape(shape)[trajectory].numpy()
                         for k, v in predictions.items()}))
    name = f"{config.name}_snapshot_{'-'.join(map(str, widths))}.png"
    return [snapshot_figure(rows, columns=SNAPSHOT_TIMES, path=Path(out) / name)]
