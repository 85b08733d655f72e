"""Run an experiment's grid, resumably, in one process or a pool of worker processes.

Results go to ``OUT/<experiment>.csv`` (one row per cell, see :mod:`.store`) and the time of
every unit of work to ``OUT/<experiment>-timings.csv``; the configuration they belong to is
``OUT/<experiment>-config.json`` (:mod:`.folder`). Checkpoints of unfinished jobs live in
``OUT/checkpoints/<experiment>/<key>/`` and are removed as each job completes. Rerunning the
same command skips every finished cell; a run of another configuration is refused. One run at a
time holds the folder (:mod:`.lock`). A CSV written before ``test_loss_clean``
(:data:`~.store.ADDED_FIELDS`) existed gains the column, empty in its rows, when a run adds cells
of data with clean targets to it; other CSVs keep their columns.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import remove_partials
from . import folder
from .config import ExperimentConfig
from .job import Job, JobRunner, Split, cell_key, job_cells
from .lock import FolderLock
from .store import ADDED_FIELDS, TIMING_FIELDS, CsvStore, ResultsStore, read_rows, row_key

Loader = Callable[[str], Split]
# Seconds between checks of the worker processes while waiting for progress messages.
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunReport:
    """Where the results went and how much of the grid this run computed."""

    results: Path
    timings: Path
    cells: int
    computed: int
    seconds: float


def plan(config: ExperimentConfig) -> list[Job]:
    """Every job of the grid, seed-major (every variant and architecture of the first seed
    first), so that a run stopped early holds whole seeds of the grid."""
    return [Job(variant, widths, seed) for seed in config.seeds
            for variant in config.variants for widths in config.architectures]


def _job_done(config: ExperimentConfig, job: Job, done: set) -> int:
    return sum(cell_key(config, job, *cell) in done for cell in job_cells(config))


def _stores(out: Path, name: str) -> tuple[ResultsStore, CsvStore]:
    return (ResultsStore(out / f"{name}.csv"),
            CsvStore(out / f"{name}-timings.csv", TIMING_FIELDS))


def _run_job(config: ExperimentConfig, job: Job, split: Split, out: Path, checkpoints: Path,
             on_rows: Callable[[list[dict]], None]) -> None:
    results, timings = _stores(out, config.name)
    JobRunner(config, job, split, results=results, timings=timings, checkpoints=checkpoints,
              done=results.done(), on_rows=on_rows).run()


def run_experiment(config: ExperimentConfig, load: Loader, *, out: str | Path,
                   device: str = "cpu", workers: int = 1, threads: int | None = None,
                   progress: bool | None = None, new: bool = False,
                   on_rows: Callable[[list[dict]], None] | None = None) -> RunReport:
    """Compute every cell of ``config`` missing from ``OUT/<name>.csv``.

    ``load(variant)`` returns the data :class:`Split` (CPU tensors); ``workers`` > 1 runs jobs
    in that many processes (each with ``threads`` torch threads); ``on_rows`` is called with the
    rows of each finished unit (in-process runs only). Raises :class:`~.lock.FolderBusy` while
    another run holds ``out`` and :class:`~.folder.ConfigMismatch` when ``out`` holds another
    configuration's results; ``new=True`` moves those aside first (:func:`.folder.set_aside`).
    """
    start = time.perf_counter()
    out = Path(out)
    with FolderLock(out):
        if new:
            folder.set_aside(out, config.name)
        remove_partials(out)
        computed = _run_locked(config, load, out, device, workers, threads, progress, on_rows)
    per_job = len(job_cells(config))
    return RunReport(out / f"{config.name}.csv", out / f"{config.name}-timings.csv",
                     per_job * len(plan(config)), computed, time.perf_counter() - start)


def _run_locked(config, load, out, device, workers, threads, progress, on_rows) -> int:
    """Check the folder's configuration, load the data the missing jobs need, run them; returns
    the number of cells computed."""
    stored = folder.FolderConfig.read(folder.config_path(out, config.name))
    rows = read_rows(out / f"{config.name}.csv")
    folder.check(stored, folder.FolderConfig.of(config), out=out, rows=rows, config=config)
    done = {row_key(row) for row in rows}
    jobs = plan(config)
    per_job = len(job_cells(config))
    finished = {job: _job_done(config, job, done) for job in jobs}
    todo = [job for job in jobs if finished[job] < per_job]
    splits = {variant: load(variant) for variant in dict.fromkeys(job.variant for job in todo)}
    current = folder.FolderConfig.of(config, {v: folder.data_digest(s) for v, s in splits.items()},
                                     {v: folder.data_sketch(s) for v, s in splits.items()})
    folder.check(stored, current, out=out, rows=rows, config=config)
    folder.update(out, stored, current, rows=rows)
    results, _ = _stores(out, config.name)
    clean = any(split.y_test_clean is not None for split in splits.values())
    if clean and results.add_columns():  # data without clean targets keep the old layout
        folder.LOG.warning("ecprune: %s gained the columns %s (empty in its %d earlier rows).",
                           results.path, ", ".join(ADDED_FIELDS), len(rows))
    root = out / "checkpoints" / config.name
    places = {job: root / current.job_key(job.variant) for job in todo}
    bar = tqdm(total=per_job * len(jobs), initial=sum(finished.values()), desc=config.name,
               unit="cell", disable=None if progress is None else not progress)
    with bar:
        if workers <= 1:
            _run_here(config, todo, splits, out, places, device, threads, bar, on_rows)
        else:
            splits.clear()  # each worker loads its own
            _run_pool(config, todo, load, out, places, device, workers, threads, bar)
    _remove_empty([*places.values(), root, out / "checkpoints"])
    return len(results.done()) - len(done)


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _run_here(config, jobs, splits, out, places, device, threads, bar, on_rows) -> None:
    if threads is not None:
        torch.set_num_threads(threads)

    def report(rows: list[dict]) -> None:
        bar.update(len(rows))
        if on_rows is not None:
            on_rows(rows)

    on_device: dict[str, Split] = {}
    for job in jobs:
        if job.variant not in on_device:
            on_device[job.variant] = splits[job.variant].to(device)
        _run_job(config, job, on_device[job.variant], out, places[job], report)


_PROGRESS: multiprocessing.Queue | None = None


def _init_worker(threads: int | None, progress: multiprocessing.Queue) -> None:
    global _PROGRESS
    _PROGRESS = progress
    if threads is not None:
        torch.set_num_threads(threads)


def _pool_job(config: ExperimentConfig, job: Job, load: Loader, out: Path, checkpoints: Path,
              device: str) -> None:
    _run_job(config, job, load(job.variant).to(device), out, checkpoints,
             lambda rows: _PROGRESS.put(len(rows)))


def _run_pool(config, jobs, load, out, places, device, workers, threads, bar) -> None:
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(threads, messages)) as pool:
        pending = {pool.submit(_pool_job, config, job, load, out, places[job], device)
                   for job in jobs}
        while pending:
            finished, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()  # re-raise a worker's error here
            _drain(messages, bar)
    _drain(messages, bar)


def _drain(messages: multiprocessing.Queue, bar: tqdm) -> None:
    while True:
        try:
            bar.update(messages.get_nowait())
        except queue.Empty:
            return
