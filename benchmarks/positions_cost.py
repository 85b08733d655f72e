"""Cost of ECP's per-sample (several rows per sample) statistics pass against one gradient pass.

A per-token MLP 128-256-128 with 10 outputs on B samples x T tokens (the tokens averaged at
the output, so every row of a sample reaches every output): the exact per-sample pass (the
output basis: 10 directions), the Hutchinson estimate with 8 probes, and the rows-as-samples
approximation (``positions="independent"``, 8 probes) and the 8 probes with bfloat16 per-sample
products (``products="bfloat16"``), each against one gradient pass over the
same data (forward + backward with weight gradients): the faster of two chunkings, 4,096
samples (ecprune's default ``chunk_size``, used for the ECP passes too) and 4,096 rows per
chunk (64 samples of 64 tokens), since a chunk of 262,144 rows is slower per sample. Writes
``docs/benchmarks/positions_cost.json`` with the machine and the date.

``--model mixer``: the MLP-Mixer of ``ecprune reproduce mixer-mnist`` (untrained, seed 0) on
``--samples`` random 28 x 28 images instead, written to ``positions_cost_mixer.json``.

Run: ``.venv/bin/python benchmarks/positions_cost.py`` (``--samples 4096 --tokens 64`` is the
issue's size; smaller sizes for a quick look).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from statistics_common import RESULTS, gradient_pass, interleaved_times, machine, write_json
from torch import nn

import ecprune
from ecprune.experiments.mixer import MIXER_ARCH
from ecprune.experiments.mixer_model import mixer


class TokenMLP(nn.Module):
    """``widths`` applied to every token, then the mean over tokens."""

    def __init__(self, widths: list[int], tokens: int):
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(len(widths) - 1):
            layers.append(nn.Linear(widths[k], widths[k + 1]))
            if k < len(widths) - 2:
                layers.append(nn.GELU())
        self.net, self.tokens, self.width = nn.Sequential(*layers), tokens, widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(len(x), self.tokens, self.width)).mean(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--model", choices=("token-mlp", "mixer"), default="token-mlp")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "mixer":
        widths, model = None, mixer(MIXER_ARCH, seed=0)
        x, tokens = torch.rand(args.samples, 784), (28 // MIXER_ARCH[0]) ** 2
    else:
        widths, tokens = [128, 256, 128, 10], args.tokens
        model = TokenMLP(widths, tokens)
        x = torch.rand(args.samples, tokens * widths[0])
    y = torch.randint(0, 10, (args.samples,))
    out = args.out or RESULTS / ("positions_cost.json" if args.model == "token-mlp"
                                 else "positions_cost_mixer.json")

    def score(**options):
        return lambda: ecprune.importance(model, x, "ecp", progress=False,
                                          chunk_size=args.chunk_size, **options)

    small = max(1, 4096 // tokens)  # samples per chunk with 4,096 rows per layer
    tasks = {"gradient pass": lambda: gradient_pass(model, x, y, "cross_entropy"),
             f"gradient pass, {small}-sample chunks": lambda: gradient_pass(
                 model, x, y, "cross_entropy", chunk=small),
             "ecp exact": score(sensitivity="exact"),
             "ecp 8 probes": score(sensitivity="hutchinson", probes=8),
             "ecp 8 probes, bfloat16 products": score(sensitivity="hutchinson", probes=8,
                                                      products="bfloat16"),
             "ecp independent, 8 probes": score(sensitivity="hutchinson", probes=8,
                                                positions="independent")}
    times = interleaved_times(tasks, args.repeats)
    base = min(times["gradient pass"]["seconds"],
               times[f"gradient pass, {small}-sample chunks"]["seconds"])
    for name, result in times.items():
        result["gradient_passes"] = round(result["seconds"] / base, 2)
        print(f"{name:>28}: {result['seconds']:7.2f} s = {result['gradient_passes']:5.2f} "
              "gradient passes")
    exact = score(sensitivity="exact")()
    errors, low_errors = {}, {}
    for label, options in (("independent", {"positions": "independent"}),
                           ("bfloat16 products", {"products": "bfloat16"}),
                           ("8 probes", {"sensitivity": "hutchinson", "probes": 8})):
        other = score(**{"sensitivity": "exact", **options})()
        errors[label] = {name: ((other[name].score - exact[name].score).abs().max()
                                / exact[name].score.abs().max()).item() for name in exact}
        low_errors[label] = {name: _lowest_decile_error(exact[name].score, other[name].score)
                             for name in exact}
        print(f"{label} against exact, max |difference| / max score per layer:",
              {k: round(v, 5) for k, v in errors[label].items()},
              "; median relative error of the lowest 10 % of scores:",
              {k: f"{v:.1e}" for k, v in low_errors[label].items()})
    write_json(out, {"machine": machine(), "model": args.model, "samples": args.samples,
                     "tokens": tokens, "widths": widths, "chunk_size": args.chunk_size,
                     "times": times, "relative_error": errors,
                     "lowest_decile_median_relative_error": low_errors})
    print(f"wrote {out}")


def _lowest_decile_error(exact: torch.Tensor, other: torch.Tensor) -> float:
    """Median of |other - exact| / exact over the lowest tenth of the exact scores (the weights
    a pruning removes first)."""
    lowest = exact.flatten().argsort()[:max(1, exact.numel() // 10)]
    return ((other.flatten() - exact.flatten()).abs()[lowest]
            / exact.flatten()[lowest].abs().clamp_min(1e-30)).median().item()


if __name__ == "__main__":
    main()
