"""How the statistics pass scales with samples, width and outputs (log-log plots).

Three sweeps, each timing a gradient pass and ECP's statistics pass on random inputs
(interleaved repeats; the fastest is plotted, as CPU time when on one thread, which the
other processes of a shared machine inflate far less than wall time):

- samples: 784-64-64-10 on 1k .. 60k inputs;
- width: 784-w-w-10 on 10k inputs;
- outputs: 256-512-512-n on 2k inputs, ECP exact and Hutchinson (default probes);
- probes: 256-512-512-1024 on 2k inputs, Hutchinson with 1 .. 64 probes against exact.

Run: ``python benchmarks/statistics_scaling.py`` (resumable: finished cells are kept);
writes ``docs/benchmarks/statistics_scaling.csv`` and ``docs/figures/statistics_scaling.png``.
"""

from __future__ import annotations

import argparse
import os

import torch
from statistics_common import (
    RESULTS,
    gradient_pass,
    interleaved_times,
    machine,
    mlp,
    pyplot,
    random_data,
    read_csv,
    save_figure,
    write_csv,
    write_json,
)

import ecprune
from ecprune.engine.sensitivity import AUTO_PROBES

SWEEPS = {
    "samples": [(784, 64, 64, 10, n) for n in (1000, 2000, 5000, 10_000, 20_000, 60_000)],
    "width": [(784, w, w, 10, 10_000) for w in (32, 64, 128, 256, 512, 1024)],
    "outputs": [(256, 512, 512, n, 2000) for n in (1, 4, 8, 16, 32, 64, 256, 1024)],
    "probes": [(256, 512, 512, 1024, 2000, p) for p in (1, 2, 4, 8, 16, 32, 64)],
}
X_OF = {"samples": 4, "width": 1, "outputs": 3, "probes": 5}
PATH = RESULTS / "statistics_scaling.csv"


def tasks(sweep: str, widths: list[int], x, y, loss: str, probes: int | None) -> dict:
    model = mlp(widths)
    found = {"gradient pass": lambda: gradient_pass(model, x, y, loss),
             "ecp": lambda: ecprune.importance(model, x, "ecp", progress=False)}
    if sweep in ("outputs", "probes"):
        del found["ecp"]
        if sweep == "outputs":  # the probes sweep's model is the last of this sweep
            found["ecp, exact"] = lambda: ecprune.importance(model, x, "ecp", progress=False,
                                                             sensitivity="exact")
        found[f"ecp, hutchinson {probes or AUTO_PROBES}"] = lambda: ecprune.importance(
            model, x, "ecp", progress=False, sensitivity="hutchinson", probes=probes)
    return found


def run(repeats: int) -> list[dict]:
    rows = read_csv(PATH)
    done = {(r["sweep"], int(r["x"])) for r in rows}
    for sweep, cells in SWEEPS.items():
        for cell in cells:
            widths, samples = list(cell[:4]), cell[4]
            probes = cell[5] if sweep == "probes" else None
            if (sweep, cell[X_OF[sweep]]) in done:
                continue
            loss = "mse" if sweep in ("outputs", "probes") else "cross_entropy"
            x, y = random_data(widths, samples, loss)
            times = interleaved_times(tasks(sweep, widths, x, y, loss, probes), repeats)
            for method, timing in times.items():
                method = "ecp, hutchinson" if sweep == "probes" and "hutch" in method else method
                rows.append({"sweep": sweep, "x": cell[X_OF[sweep]], "method": method,
                             "model": "-".join(map(str, widths)), "samples": samples,
                             "seconds": round(timing["seconds"], 4),
                             "median_seconds": round(timing["median_seconds"], 4),
                             "cpu_seconds": round(timing["cpu_seconds"], 4),
                             "load": round(os.getloadavg()[0], 2),
                             "threads": torch.get_num_threads()})
            print(rows[-len(times):], flush=True)
            write_csv(PATH, rows)
    return rows


def plot(rows: list[dict]) -> None:
    labels = {"samples": "training inputs (784-64-64-10)",
              "width": "hidden width w (784-w-w-10, 10k inputs)",
              "outputs": "outputs n (256-512-512-n, 2k inputs)",
              "probes": "Hutchinson probes (256-512-512-1024, 2k inputs)"}
    threads = int(rows[0]["threads"])
    key = "cpu_seconds" if threads == 1 else "seconds"  # one thread: CPU time ignores the load
    fig, axes = pyplot().subplots(1, 4, figsize=(19, 4.2))
    for ax, sweep in zip(axes, SWEEPS, strict=True):
        mine = [r for r in rows if r["sweep"] == sweep]
        for method in dict.fromkeys(r["method"] for r in mine):
            points = sorted((int(r["x"]), float(r[key])) for r in mine
                            if r["method"] == method)
            ax.plot(*zip(*points, strict=True), marker="o", label=method)
        if sweep == "probes":
            exact = [float(r[key]) for r in rows if r["sweep"] == "outputs"
                     and r["method"] == "ecp, exact" and int(r["x"]) == 1024]
            for seconds in exact:
                ax.axhline(seconds, color="gray", ls="--", label="ecp, exact (outputs sweep)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(labels[sweep])
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Statistics pass against one gradient pass (float32, {threads} thread(s), "
                 "fastest of 5)", fontsize=11)
    save_figure(fig, "statistics_scaling.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: robust timings on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.repeats)
    write_json(RESULTS / "statistics_scaling.json",
               {"machine": machine(), "command": "python benchmarks/statistics_scaling.py"})
    plot(rows)


if __name__ == "__main__":
    main()
