"""torch.distributed (gloo, 2 processes on localhost) gives the single-process results."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ecprune
from distributed_worker import problem, results
from ecprune.engine.batching import shard_range
from ecprune.engine.statistics import sample_keys

WORKER = Path(__file__).with_name("distributed_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp_path: Path, scenario: str, world_size: int = 2, timeout: float = 120):
    """Run the worker on every rank; return (exit codes, stderr texts, seconds)."""
    port, start = free_port(), time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(rank), str(world_size),
                               str(port), str(tmp_path), scenario],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(world_size)]
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    return [p.returncode for p in procs], [err for _, err in outputs], time.perf_counter() - start


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif a is None:
        assert b is None
    else:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("scenario", ["dataset", "iterable", "tokens"])
def test_two_ranks_equal_one_process_on_uneven_shards(tmp_path, scenario):
    codes, errors, _ = launch(tmp_path, scenario)
    assert codes == [0, 0], errors
    reference = results(*problem(scenario), scenario)
    for rank in range(2):
        assert_same(torch.load(tmp_path / f"rank{rank}.pt"), reference)


def test_a_failing_rank_fails_every_rank_with_a_clear_message(tmp_path):
    codes, errors, _ = launch(tmp_path, "fail")
    assert codes == [2, 2]
    assert "rank 1: ValueError" in errors[1] and "NaN or infinite" in errors[1]
    assert "RankFailure" in errors[0] and "failed on another rank (rank 1: ValueError" in errors[0]


@pytest.mark.parametrize(("scenario", "key"), [("mismatch-sparsity", "sparsity"),
                                               ("mismatch-data", "samples")])
def test_ranks_that_disagree_fail_together_with_one_message(tmp_path, scenario, key):
    codes, errors, seconds = launch(tmp_path, scenario, timeout=60)
    assert codes == [2, 2] and seconds < 60
    for rank in range(2):
        assert f"The ranks disagree on {key} (rank 0: " in errors[rank], errors[rank]


def test_a_dead_rank_does_not_hang_the_others(tmp_path):
    codes, errors, seconds = launch(tmp_path, "die")
    assert codes[1] == 3 and codes[0] != 0, errors
    assert seconds < 90  # bounded by the 20 s process-group timeout, not a hang


def test_shards_cover_the_data_exactly_once():
    for n in range(0, 12):
        for world_size in (1, 2, 3, 5):
            ranges = [shard_range(n, r, world_size) for r in range(world_size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_sample_keys_depend_only_on_position():
    whole = sample_keys(5, 0, 100)
    torch.testing.assert_close(torch.cat([sample_keys(5, 0, 37), sample_keys(5, 37, 63)]), whole)
    assert ((whole >= 0) & (whole < 1)).all() and len(set(whole.tolist())) == 100
    assert not torch.equal(whole, sample_keys(6, 0, 100))


def test_not_distributed_means_one_rank():
    assert ecprune.distributed.world() == (0, 1)
    assert not ecprune.distributed.is_distributed()


FACTORY = """
import torch

def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.PReLU(), torch.nn.Linear(16, 3))
"""


def test_cli_prune_under_torchrun_equals_one_process(tmp_path):
    """`torchrun ... -m ecprune prune` writes (on rank 0 only) what one process writes."""
    (tmp_path / "arch.py").write_text(FACTORY)
    sys.path.insert(0, str(tmp_path))
    try:
        from arch import make
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(make().state_dict(), tmp_path / "weights.pt")
    np.save(tmp_path / "inputs.npy", np.random.default_rng(0).normal(size=(203, 6)))
    common = ["prune", "arch:make", "--path", str(tmp_path), "--weights", "weights.pt",
              "inputs.npy", "--sparsity", "0.7", "--chunk-size", "16", "--quiet"]
    single = subprocess.run([sys.executable, "-m", "ecprune", *common, "-o", "one.pt"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2", "-m", "ecprune"]
    multi = subprocess.run([*launcher, *common, "-o", "two.pt", "--dist-timeout", "60"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert multi.returncode == 0, multi.stderr
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-6, atol=1e-7)
    reports = [json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json")]
    for key in ("kept", "samples", "predicted_error", "measured_error", "mean_output_sq"):
        assert reports[1][key] == pytest.approx(reports[0][key], rel=1e-6), key
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["one.json", "two.json"]
