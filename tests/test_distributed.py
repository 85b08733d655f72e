"""torch.distributed (gloo, 2 processes on localhost) gives the single-process results."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ecprune
from distributed_worker import problem, results
from ecprune.batching import shard_range
from ecprune.statistics import sample_keys

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


@pytest.mark.parametrize("scenario", ["dataset", "iterable"])
def test_two_ranks_equal_one_process_on_uneven_shards(tmp_path, scenario):
    codes, errors, _ = launch(tmp_path, scenario)
    assert codes == [0, 0], errors
    reference = results(*problem(scenario))
    for rank in range(2):
        assert_same(torch.load(tmp_path / f"rank{rank}.pt"), reference)


def test_a_failing_rank_fails_every_rank_with_a_clear_message(tmp_path):
    codes, errors, _ = launch(tmp_path, "fail")
    assert codes == [2, 2]
    assert "rank 1: ValueError" in errors[1] and "NaN or infinite" in errors[1]
    assert "RankFailure" in errors[0] and "failed on another rank (rank 1: ValueError" in errors[0]


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
