"""Run the tiny experiment (one seed) into OUT and die by SIGKILL halfway through writing the
first file whose name contains TRIGGER: a ``kill -9`` landing inside a checkpoint write. Run as
a script by test_results_folder.py, not a test.

Usage: python reproduce_driver.py OUT TRIGGER
"""

from __future__ import annotations

import io
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ecprune.experiments.runner import run_experiment
from tiny_experiment import TINY, tiny_split

SAVE = torch.save


def save_then_die(obj, f, *args, **kwargs):
    """torch.save, except that a file named like TRIGGER gets half its bytes, then SIGKILL."""
    if sys.argv[2] not in Path(str(getattr(f, "name", f))).name:
        return SAVE(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    SAVE(obj, buffer)
    half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    with open(f, "wb") if isinstance(f, str | os.PathLike) else f as handle:
        handle.write(half)
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    torch.save = save_then_die
    torch.set_num_threads(1)
    run_experiment(replace(TINY, seeds=(0,)), tiny_split, out=sys.argv[1], progress=False)
