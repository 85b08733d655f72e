"""A tidy CSV of results, appended and flushed as each cell finishes, safe to resume.

One row per (experiment, variant, arch, seed, method, ratio, phase). Appends take an exclusive
``flock``, so several worker processes can share one file, and each append is flushed and
fsynced: a killed run leaves every finished row on disk. A half-written last line (the kill
landed inside a write) is cut off the next time the file is opened.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

RESULT_FIELDS = ("experiment", "variant", "arch", "seed", "method", "ratio", "phase", "kept",
                 "total", "epochs", "test_loss", "test_accuracy", "score_seconds")
KEY_FIELDS = ("experiment", "variant", "arch", "seed", "method", "ratio", "phase")
TIMING_FIELDS = ("experiment", "variant", "arch", "seed", "unit", "networks", "epochs",
                 "seconds")
PHASES = ("dense", "prune", "finetune")


def format_ratio(ratio: float) -> str:
    """Ratios as written in the CSV (and compared as keys): ``0.1``, ``0.95``, ``0``."""
    return f"{float(ratio):g}"


def row_key(row: dict) -> tuple[str, ...]:
    """The identity of a result row, as strings (what the CSV holds)."""
    values = {**row, "ratio": format_ratio(row["ratio"]), "seed": str(int(row["seed"]))}
    return tuple(str(values[field]) for field in KEY_FIELDS)


class CsvStore:
    """Append-only CSV with a fixed header; see the module docstring."""

    def __init__(self, path: str | Path, fields: Sequence[str]):
        self.path = Path(path)
        self.fields = tuple(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as handle:
            self._repair(handle)

    def _locked(self):
        handle = open(self.path, "a+", newline="")  # noqa: SIM115 - closed by the caller's with
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def _repair(self, handle: io.TextIOBase) -> None:
        handle.seek(0)
        text = handle.read()
        if not text:
            return
        header = next(csv.reader(text.splitlines()[:1]))
        if tuple(header) != self.fields:
            raise ValueError(f"{self.path} has the columns {header}, not {list(self.fields)}; "
                             "write to another --out directory.")
        if not text.endswith("\n"):
            handle.truncate(text.rfind("\n") + 1)

    def append(self, rows: Iterable[dict]) -> None:
        """Write ``rows`` (dicts with the store's fields) at the end, then flush and fsync."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fields, lineterminator="\n")
        for row in rows:
            writer.writerow({field: row.get(field, "") for field in self.fields})
        with self._locked() as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                handle.write(",".join(self.fields) + "\n")
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())

    def rows(self) -> list[dict[str, str]]:
        """Every row, as strings."""
        return read_rows(self.path)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results CSV as dicts of strings (empty when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if None not in row.values()]


class ResultsStore(CsvStore):
    """The results CSV: knows which cells are finished."""

    def __init__(self, path: str | Path):
        super().__init__(path, RESULT_FIELDS)

    def done(self) -> set[tuple[str, ...]]:
        """Keys of the finished cells."""
        return {row_key(row) for row in self.rows()}
