"""Aggregate a results CSV over seeds: per-cell statistics, markdown tables, significance tests.

Significance (used in the docs): a pruned network is compared with *its own* dense network
(same seed) by a two-sided paired t-test over seeds on the test loss; two pruning methods are
compared by a paired t-test too (both start from the same dense network of each seed), except
the width-reduced "fully-connected" baseline, which shares no network with the others and is
compared by Welch's t-test. Alpha is 0.05.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
UNPAIRED = frozenset({"fully-connected"})
# The loss against the noise-free targets, where the data have them (``test_loss_clean``).
METRICS = {"test_loss": "test loss", "test_loss_clean": "clean test loss",
           "test_accuracy": "test accuracy"}


def number(value: float, digits: int = 4) -> str:
    """``digits`` decimals from 0.1 up (losses and accuracies of classification), else
    ``digits`` significant digits in scientific notation (regression losses of 1e-5).

    >>> number(0.11344), number(1.2787), number(0.0000123456), number(0.0)
    ('0.1134', '1.2787', '1.235e-05', '0.0000')
    """
    if value == 0 or abs(value) >= 0.1:
        return f"{value:.{digits}f}"
    return f"{value:.{digits - 1}e}"


@dataclass(frozen=True)
class Cell:
    """One (variant, arch, method, phase, ratio) over seeds: values keyed by seed."""

    values: dict[int, float]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.values.values())))

    @property
    def low(self) -> float:
        return min(self.values.values())

    @property
    def high(self) -> float:
        return max(self.values.values())


Key = tuple[str, str, str, str, float]  # variant, arch, method, phase, ratio


def cells(rows: Iterable[dict[str, str]], metric: str = "test_loss") -> dict[Key, Cell]:
    """Group rows by (variant, arch, method, phase, ratio); skip rows without ``metric``."""
    grouped: dict[Key, dict[int, float]] = defaultdict(dict)
    for row in rows:
        if row.get(metric, "") == "":
            continue
        key = (row["variant"], row["arch"], row["method"], row["phase"], float(row["ratio"]))
        grouped[key][int(row["seed"])] = float(row[metric])
    return {key: Cell(values) for key, values in grouped.items()}


def unique(rows: Iterable[dict[str, str]], field: str) -> list[str]:
    """Values of ``field`` in order of first appearance."""
    return list(dict.fromkeys(row[field] for row in rows))


def _ttest(a: Sequence[float], b: Sequence[float], *, paired: bool) -> float:
    """Two-sided p-value. With one seed the test is undefined: 1.0. Constant paired
    differences (zero variance) give 0.0 when they are non-zero, else 1.0."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return 1.0
    diff = np.subtract(a, b) if paired else None
    if paired and np.ptp(diff) == 0:
        return 0.0 if diff[0] != 0 else 1.0
    with warnings.catch_warnings():  # nearly identical samples: scipy warns, still answers
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    return 1.0 if math.isnan(result.pvalue) else float(result.pvalue)


def compare(first: Cell, second: Cell, *, paired: bool) -> float:
    """p-value of first vs second over their common seeds (paired) or all seeds (Welch)."""
    if paired:
        seeds = sorted(set(first.values) & set(second.values))
        return _ttest([first.values[s] for s in seeds], [second.values[s] for s in seeds],
                      paired=True)
    return _ttest(list(first.values.values()), list(second.values.values()), paired=False)


def markdown_table(table: dict[Key, Cell], *, variant: str, arch: str, phase: str,
                   methods: Sequence[str], ratios: Sequence[float], digits: int = 4) -> str:
    """Methods x ratios of the mean over seeds, the lowest loss per ratio in bold."""
    header = "| method | " + " | ".join(f"{r:g}" for r in ratios) + " |"
    lines = [header, "|" + " --- |" * (len(ratios) + 1)]
    for method in methods:
        entries = []
        for ratio in ratios:
            cell = table.get((variant, arch, method, phase, ratio))
            entries.append("" if cell is None else number(cell.mean, digits))
        if any(entries):
            lines.append(f"| {method} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def _ratios(table: dict[Key, Cell], variant: str, arch: str, phase: str) -> list[float]:
    return sorted({key[4] for key in table if key[:2] == (variant, arch) and key[3] == phase})


def no_change_ratios(table: dict[Key, Cell], variant: str, arch: str,
                     method: str) -> tuple[float, float]:
    """Largest ratio up to which pruning alone leaves the test loss unchanged, by two notions:
    (paired t-test against the same seeds' dense losses: not significantly higher at
    ``ALPHA``; the mean over seeds within the min-max of the dense losses). 0 when even the
    smallest ratio fails."""
    dense = table[(variant, arch, "dense", "dense", 0.0)]
    by_test = by_band = 0.0
    test_ok = band_ok = True
    for ratio in _ratios(table, variant, arch, "prune"):
        cell = table.get((variant, arch, method, "prune", ratio))
        if cell is None:
            break
        higher = cell.mean > dense.mean and compare(cell, dense, paired=True) < ALPHA
        test_ok = test_ok and not higher
        band_ok = band_ok and cell.mean <= dense.high
        by_test = ratio if test_ok else by_test
        by_band = ratio if band_ok else by_band
    return by_test, by_band


def ranking(table: dict[Key, Cell], variant: str, arch: str, phase: str,
            ratio: float) -> list[tuple[str, Cell]]:
    """Methods at one ratio and phase, lowest mean first."""
    found = [(key[2], cell) for key, cell in table.items()
             if key[:2] == (variant, arch) and key[3:] == (phase, ratio)]
    return sorted(found, key=lambda item: item[1].mean)


def _p(first: tuple[str, Cell], second: tuple[str, Cell]) -> float:
    paired = first[0] not in UNPAIRED and second[0] not in UNPAIRED
    return compare(first[1], second[1], paired=paired)


def winners_table(table: dict[Key, Cell], variant: str, arch: str, phase: str,
                  method: str = "ecp") -> str:
    """Per ratio: the best method, ``method``'s rank and the p-value of the leader's lead."""
    lines = [f"| ratio | best | 2nd | {method} rank | p (1st vs 2nd) |",
             "| --- | --- | --- | --- | --- |"]
    for ratio in _ratios(table, variant, arch, phase):
        ranked = ranking(table, variant, arch, phase, ratio)
        names = [name for name, _ in ranked]
        if len(ranked) < 2 or method not in names:
            continue
        first, second = ranked[0], ranked[1]
        lines.append(f"| {ratio:g} | {first[0]} {number(first[1].mean)} | {second[0]} "
                     f"{number(second[1].mean)} | {names.index(method) + 1} of {len(names)} | "
                     f"{_p(first, second):.3g} |")
    return "\n".join(lines)


def head_to_head(table: dict[Key, Cell], arch: str, phase: str, method: str = "ecp") -> str:
    """``method`` against each other method over every variant and ratio of ``arch``: how often
    it is significantly better, not significantly different, significantly worse."""
    counts: dict[str, list[int]] = {}
    for key, cell in table.items():
        if key[1] != arch or key[3] != phase or key[2] == method:
            continue
        own = table.get((key[0], arch, method, phase, key[4]))
        if own is None:
            continue
        significant = _p((method, own), (key[2], cell)) < ALPHA
        outcome = 1 if not significant else (0 if own.mean < cell.mean else 2)
        counts.setdefault(key[2], [0, 0, 0])[outcome] += 1
    lines = [f"| {method} against | {method} better | no significant difference | "
             f"{method} worse |", "| --- | --- | --- | --- |"]
    lines += [f"| {other} | {c[0]} | {c[1]} | {c[2]} |" for other, c in counts.items()]
    return "\n".join(lines)


def variant_table(table: dict[Key, Cell], arch: str, phase: str, methods: Sequence[str],
                  variants: Sequence[str]) -> str:
    """Methods x ratios; each entry the means of the variants in order, ``a / b / c``."""
    ratios = sorted({key[4] for key in table if key[1] == arch and key[3] == phase})
    lines = ["| method | " + " | ".join(f"{r:g}" for r in ratios) + " |",
             "|" + " --- |" * (len(ratios) + 1)]
    for method in methods:
        if not any((v, arch, method, phase, r) in table for v in variants for r in ratios):
            continue
        entries = [" / ".join(number(table[(v, arch, method, phase, r)].mean, 2)
                              if (v, arch, method, phase, r) in table else "-" for v in variants)
                   for r in ratios]
        lines.append(f"| {method} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def variant_agreement(table: dict[Key, Cell], arch: str, phase: str,
                      variants: Sequence[str]) -> str:
    """Per ratio: the best method of each variant, and the Spearman correlation of the methods'
    mean losses in each later variant with those in the first (1: the same order)."""
    from scipy import stats

    ratios = sorted({key[4] for key in table if key[1] == arch and key[3] == phase})
    lines = [f"| ratio | best per variant | Spearman vs {variants[0] or 'first'} |",
             "| --- | --- | --- |"]
    for ratio in ratios:
        ranked = {v: dict(ranking(table, v, arch, phase, ratio)) for v in variants}
        common = sorted(set.intersection(*(set(r) for r in ranked.values())))
        if len(common) < 2:
            continue
        first = [ranked[variants[0]][m].mean for m in common]
        rhos = [stats.spearmanr(first, [ranked[v][m].mean for m in common]).statistic
                for v in variants[1:]]
        best = " / ".join(min(ranked[v], key=lambda m: ranked[v][m].mean) for v in variants)
        lines.append(f"| {ratio:g} | {best} | " + " / ".join(f"{r:.2f}" for r in rhos) + " |")
    return "\n".join(lines)


def change_table(table: dict[Key, Cell], variant: str, arch: str, method: str,
                 phase: str, reference: str | None = None) -> str:
    """Per ratio: ``method``'s mean, its change relative to ``reference`` (that method at the
    same ratio and phase; None: the dense network) and the paired p-value."""
    dense = table[(variant, arch, "dense", "dense", 0.0)]
    digits = 1 if reference is None else 2  # two methods often differ by less than 0.1 %
    lines = [f"| ratio | mean | vs {reference or 'dense'} | p (paired) |",
             "| --- | --- | --- | --- |"]
    for ratio in _ratios(table, variant, arch, phase):
        cell = table.get((variant, arch, method, phase, ratio))
        base = dense if reference is None else table.get((variant, arch, reference, phase, ratio))
        if cell is not None and base is not None:
            change = (cell.mean - base.mean) / base.mean
            lines.append(f"| {ratio:g} | {number(cell.mean)} | {change:+.{digits}%} | "
                         f"{compare(cell, base, paired=True):.3g} |")
    return "\n".join(lines)


PHASE_LABELS = {"prune": "prune only", "finetune": "prune + fine-tune"}


def phases(rows: Iterable[dict[str, str]]) -> dict[str, str]:
    """The pruning phases present in ``rows`` (a prune-only grid has no "finetune")."""
    present = {row["phase"] for row in rows}
    return {phase: label for phase, label in PHASE_LABELS.items() if phase in present}


def _pairs(tables: dict[str, dict[Key, Cell]], present: dict[str, str], variant: str,
           arch: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for method, reference in pairs:
        for metric, table in tables.items():
            for phase, label in present.items():
                if table:
                    out += [f"### {method} against {reference}: {metric}, {label}", "",
                            change_table(table, variant, arch, method, phase, reference), ""]
    return out


def _section(rows: list[dict[str, str]], variant: str, arch: str,
             pairs: Sequence[tuple[str, str]] = ()) -> list[str]:
    tables = {label: cells(rows, metric) for metric, label in METRICS.items()}
    loss, accuracy = tables["test loss"], tables["test accuracy"]
    methods = [m for m in unique(rows, "method") if m != "dense"]
    present = phases(rows)
    ratios = _ratios(loss, variant, arch, "prune") or _ratios(loss, variant, arch, "finetune")
    dense_key = (variant, arch, "dense", "dense", 0.0)
    dense, clean = loss[dense_key], tables["clean test loss"].get(dense_key)
    title = f"{arch}" + (f", {variant}" if variant else "")
    out = [f"## {title}", "",
           f"Dense: test loss {number(dense.mean)} (seeds {number(dense.low)}-"
           f"{number(dense.high)})"
           + (f", clean test loss {number(clean.mean)} (seeds {number(clean.low)}-"
              f"{number(clean.high)})" if clean else "")
           + (f", accuracy {number(accuracy[dense_key].mean)}" if accuracy else "")
           + f", {len(dense.values)} seeds.", ""]
    for metric, table in tables.items():
        for phase, label in present.items():
            if table:
                out += [f"### Mean {metric}, {label}", "",
                        markdown_table(table, variant=variant, arch=arch, phase=phase,
                                       methods=methods, ratios=ratios), ""]
    out += ["### Largest ratio with no test-loss change (prune only)", "",
            "| method | paired t-test | within dense spread |", "| --- | --- | --- |"]
    for method in methods:
        if (variant, arch, method, "prune", ratios[0]) in loss:
            by_test, by_band = no_change_ratios(loss, variant, arch, method)
            out.append(f"| {method} | {by_test:g} | {by_band:g} |")
    for phase, label in present.items():
        out += ["", f"### Ranking by mean test loss, {label}", "",
                winners_table(loss, variant, arch, phase)]
    if "finetune" in present:
        out += ["", "### ECP's test loss against dense, prune + fine-tune", "",
                change_table(loss, variant, arch, "ecp", "finetune")]
    return [*out, "", *_pairs(tables, present, variant, arch, pairs)]


def scoring_seconds(rows: list[dict[str, str]]) -> str:
    """Mean scoring time per architecture and method, as a markdown table."""
    times: dict[tuple[str, str], dict[tuple[str, str], float]] = defaultdict(dict)
    for row in rows:
        if row.get("score_seconds"):
            times[(row["arch"], row["method"])][(row["variant"], row["seed"])] = float(
                row["score_seconds"])
    lines = ["| architecture | method | scoring seconds (mean over jobs) |", "| --- | --- | --- |"]
    for (arch, method), values in times.items():
        lines.append(f"| {arch} | {method} | {np.mean(list(values.values())):.2f} |")
    return "\n".join(lines)


def cost_table(rows: list[dict[str, str]], timings: list[dict[str, str]]) -> str:
    """Mean over seeds of each method's pruning seconds (``score_seconds``: scoring, steps and
    weight updates) divided by the same job's gradient pass (the mean of its measurements when
    a resumed job measured it again), per architecture and ratio; empty when the timings hold
    no "gradient-pass" unit."""
    passes: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for t in timings:
        if t["unit"] == "gradient-pass":
            passes[(t["variant"], t["arch"], t["seed"])].append(float(t["seconds"]))
    unit = {job: float(np.mean(seconds)) for job, seconds in passes.items()}
    ratios: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for row in rows:
        job = (row["variant"], row["arch"], row["seed"])
        if row["phase"] == "prune" and row.get("score_seconds") and unit.get(job):
            key = (row["arch"], row["method"], float(row["ratio"]))
            ratios[key].append(float(row["score_seconds"]) / unit[job])
    if not ratios:
        return ""
    columns = sorted({key[2] for key in ratios})
    lines = ["| architecture | method | " + " | ".join(f"{r:g}" for r in columns) + " |",
             "|" + " --- |" * (len(columns) + 2)]
    for arch, method in dict.fromkeys(key[:2] for key in ratios):
        entries = [f"{np.mean(ratios[(arch, method, r)]):.1f}" if (arch, method, r) in ratios
                   else "" for r in columns]
        lines.append(f"| {arch} | {method} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def _across_variants(rows: list[dict[str, str]], arch: str) -> list[str]:
    """Head-to-head counts over all variants and ratios; with several variants, each
    method's mean loss per variant side by side."""
    loss, clean = cells(rows, "test_loss"), cells(rows, "test_loss_clean")
    variants = unique(rows, "variant")
    methods = [m for m in unique(rows, "method") if m != "dense"]
    title = f"{arch}, all variants" if len(variants) > 1 else arch
    out = []
    for phase, label in phases(rows).items():
        out += [f"### {title}: ECP head to head, {label} (paired t-tests, alpha {ALPHA})", "",
                head_to_head(loss, arch, phase), ""]
        if len(variants) > 1:
            for metric, table in (("test loss", loss), ("clean test loss", clean)):
                if table:
                    out += [f"### {arch}: mean {metric} per variant ({' / '.join(variants)}), "
                            f"{label}", "", variant_table(table, arch, phase, methods, variants),
                            ""]
            out += [f"### {arch}: does the order of the methods change across variants? "
                    f"{label}", "", variant_agreement(loss, arch, phase, variants), ""]
    return out


def experiment_report(rows: list[dict[str, str]], timings: list[dict[str, str]] | None = None,
                      pairs: Sequence[tuple[str, str]] = ()) -> str:
    """The markdown summary of one results CSV: tables and significance per architecture, the
    cost of pruning in gradient passes when ``timings`` (the timings CSV) are given, and for
    every ``(method, reference)`` of ``pairs`` the change and paired p-value per ratio."""
    out = []
    for experiment in unique(rows, "experiment"):
        mine = [row for row in rows if row["experiment"] == experiment]
        seeds = sorted({int(row["seed"]) for row in mine})
        out += [f"# {experiment}: {len(mine)} rows, seeds {seeds}", "",
                f"Significance: two-sided t-tests over seeds, alpha = {ALPHA} (see "
                "ecprune.experiments.summary).", ""]
        # A running sweep may have begun a (variant, arch) whose dense row is not written yet.
        started = {(r["variant"], r["arch"]) for r in mine if r["phase"] == "dense"}
        ready = [r for r in mine if (r["variant"], r["arch"]) in started]
        for arch in unique(ready, "arch"):
            for variant in unique(ready, "variant"):
                if (variant, arch) in started:
                    out += _section([r for r in ready if (r["variant"], r["arch"])
                                     == (variant, arch)], variant, arch, pairs)
            out += _across_variants([r for r in ready if r["arch"] == arch], arch)
        out += ["## Scoring time", "", scoring_seconds(mine), ""]
        cost = cost_table(mine, [t for t in timings or [] if t["experiment"] == experiment])
        if cost:
            out += ["## Pruning time in gradient passes (mean over seeds, per ratio)", "",
                    "Seconds to prune the dense network to each ratio (scoring, every step and "
                    "weight update) over the seconds of one forward + backward pass over the "
                    "training set, measured in the same job.", "", cost, ""]
    return "\n".join(out)
