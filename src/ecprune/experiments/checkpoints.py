"""Checkpoints of unfinished jobs: written atomically, and a damaged one discarded, not fatal.

:func:`save` writes through :mod:`ecprune.atomic`, so a kill leaves the previous file or none.
:func:`load` reads with ``weights_only=True`` and hands the state to ``restore``; a file that
cannot be read (truncated, empty, foreign) or restored (missing keys, wrong shapes) is deleted
with a one-line notice on the ``ecprune`` logger, and the caller recomputes it.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..atomic import save_torch

LOG = logging.getLogger("ecprune.experiments")
# What reading or restoring a damaged checkpoint raises: torch.load on a cut or foreign file
# (EOFError, RuntimeError, UnpicklingError, BadZipFile), restore on the wrong content.
DAMAGED = (EOFError, RuntimeError, ValueError, KeyError, TypeError, IndexError,
           pickle.UnpicklingError, zipfile.BadZipFile)

T = TypeVar("T")


def save(state: object, path: Path) -> None:
    """``torch.save(state, path)`` through a temporary file and a rename."""
    save_torch(state, path)


def load(path: Path, restore: Callable[[object], T], *,
         map_location: str | torch.device = "cpu") -> T | None:
    """``restore(torch.load(path))``, or None when there is no such file or it is damaged (then
    it is deleted and a notice logged)."""
    if not path.is_file():
        return None
    try:
        return restore(torch.load(path, map_location=map_location, weights_only=True))
    except DAMAGED as err:
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        LOG.warning("ecprune: discarding the damaged checkpoint %s (%s); recomputing it.", path,
                    reason)
        path.unlink(missing_ok=True)
        return None
