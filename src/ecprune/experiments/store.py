"""A tidy CSV of results, appended and flushed as each cell finishes, safe to resume.

One row per (experiment, variant, arch, seed, method, ratio, phase). Columns added since the
first results were written (:data:`ADDED_FIELDS`) may be missing from an older CSV: it still
loads, resumes and summarises, and :meth:`ResultsStore.add_columns` gives it the new columns
(empty in its old rows) before a run appends to it. Appends go through
:func:`ecprune.atomic.locked_append`: an exclusive ``flock``, so several worker processes can
share one file, and each append flushed and fsynced, so a killed run leaves every finished row on
disk. A half-written last line (the kill landed inside a write) is cut off by the next append,
and every reader here ignores it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..atomic import locked_append, write_text

RESULT_FIELDS = ("experiment", "variant", "arch", "seed", "method", "ratio", "phase", "kept",
                 "total", "epochs", "test_loss", "test_accuracy", "score_seconds")
# Written since, so an older CSV may lack them: the test loss against the noise-free targets,
# for data that have them (diffusion-sorption; empty otherwise).
ADDED_FIELDS = ("test_loss_clean",)
KEY_FIELDS = ("experiment", "variant", "arch", "seed", "method", "ratio", "phase")
TIMING_FIELDS = ("experiment", "variant", "arch", "seed", "unit", "networks", "epochs",
                 "seconds")
PHASES = ("dense", "prune", "finetune")
# Columns that hold numbers; those of REQUIRED never empty (a regression has no accuracy, a dense
# row no scoring time).
RESULT_NUMBERS = {"seed": int, "ratio": float, "kept": int, "total": int, "epochs": int,
                  "test_loss": float, "test_accuracy": float, "score_seconds": float,
                  "test_loss_clean": float}
TIMING_NUMBERS = {"seed": int, "networks": int, "epochs": int, "seconds": float}
REQUIRED = ("seed", "ratio", "test_loss", "seconds")


def format_ratio(ratio: float) -> str:
    """Ratios as written in the CSV (and compared as keys): ``0.1``, ``0.95``, ``0``."""
    return f"{float(ratio):g}"


def row_key(row: dict) -> tuple[str, ...]:
    """The identity of a result row, as strings (what the CSV holds)."""
    values = {**row, "ratio": format_ratio(row["ratio"]), "seed": str(int(row["seed"]))}
    return tuple(str(values[field]) for field in KEY_FIELDS)


class CsvStore:
    """Append-only CSV with a fixed header; see the module docstring.

    ``added``: fields of ``fields`` that a file written before they existed may lack; rows
    appended to such a file leave them out.
    """

    def __init__(self, path: str | Path, fields: Sequence[str], added: Sequence[str] = ()):
        self.path = Path(path)
        self.fields = tuple(fields)
        self.added = tuple(added)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked_append(self.path) as handle:
            self._header(handle)

    def _header(self, handle: io.BufferedRandom) -> tuple[str, ...]:
        """The columns of the open file (the store's fields when it is empty), checked; leaves
        ``handle`` at the end."""
        if handle.tell() == 0:
            return self.fields
        handle.seek(0)
        header = tuple(next(csv.reader([handle.readline().decode(errors="replace")]), []))
        handle.seek(0, io.SEEK_END)
        if header != tuple(f for f in self.fields if f in header or f not in self.added):
            raise ValueError(f"{self.path} has the columns {list(header)}, not "
                             f"{list(self.fields)}; write to another --out directory.")
        return header

    def append(self, rows: Iterable[dict]) -> None:
        """Write ``rows`` (dicts with the store's fields) at the end, in the file's columns, then
        flush and fsync."""
        with locked_append(self.path) as handle:
            header = self._header(handle)
            buffer = io.StringIO()
            if handle.tell() == 0:
                buffer.write(",".join(header) + "\n")
            writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
            for row in rows:
                writer.writerow({field: row.get(field, "") for field in header})
            handle.write(buffer.getvalue().encode())

    def rows(self) -> list[dict[str, str]]:
        """Every row, as strings."""
        return read_rows(self.path)


def complete_text(text: str) -> str:
    """``text`` up to its last newline: a torn last line, cut by a kill, is left out."""
    return text[: text.rfind("\n") + 1]


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results CSV as dicts of strings (empty when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [row for row in csv.DictReader(io.StringIO(_text(path), newline=""))
            if None not in row.values()]


class ResultsStore(CsvStore):
    """The results CSV: knows which cells are finished."""

    def __init__(self, path: str | Path):
        super().__init__(path, RESULT_FIELDS + ADDED_FIELDS, ADDED_FIELDS)

    def done(self) -> set[tuple[str, ...]]:
        """Keys of the finished cells."""
        return {row_key(row) for row in self.rows()}

    def add_columns(self) -> bool:
        """Give a CSV written before :data:`ADDED_FIELDS` existed those columns, empty in its
        rows (a whole new file, renamed over the old one); True when it did. Only while no
        other process writes to the file (under the folder lock, before workers start)."""
        with locked_append(self.path) as handle:
            if self._header(handle) == self.fields:
                return False
            handle.seek(0)
            rows = list(csv.DictReader(io.StringIO(complete_text(handle.read().decode()),
                                                   newline="")))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fields, restval="",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, buffer.getvalue())
        return True


def _text(path: Path) -> str:
    """The complete lines of ``path``; ValueError naming the line of a byte that is no text."""
    raw = path.read_bytes()
    try:
        text = raw.decode()
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path} is not a text CSV file: line {line} holds the byte "
                         f"{raw[err.start]:#04x}, which is not UTF-8.") from None
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise ValueError(f"{path} is not a text CSV file: line {line} holds a NUL byte.")
    return complete_text(text)


def _check_numbers(row: dict[str, str], numbers: dict[str, type], where: str) -> None:
    for name, kind in numbers.items():
        value = row[name]
        if value == "" and name not in REQUIRED:
            continue
        try:
            kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"{where}: {name} is {value!r}, not {what}.") from None


def read_checked(path: str | Path, fields: Sequence[str], numbers: dict[str, type], *,
                 unique: bool = False) -> list[dict[str, str]]:
    """The rows of a CSV written by ``ecprune reproduce``, checked: ValueError naming the file
    (and the line) when it is not text, lacks one of ``fields``, has a row of the wrong length
    or a cell of ``numbers`` that is not one, or (``unique``) holds a cell's key twice."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_text(path), newline=""))
    missing = [field for field in fields if field not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; expected a CSV written by "
                         "`ecprune reproduce`.")
    rows, seen = [], {}
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        if None in row or None in row.values():
            raise ValueError(f"{where}: the number of fields is not the header's "
                             f"{len(reader.fieldnames)}.")
        _check_numbers(row, {k: v for k, v in numbers.items() if k in row}, where)
        if unique:
            key = row_key(row)
            if key in seen:
                cell = ", ".join(f"{k}={v}" for k, v in zip(KEY_FIELDS, key, strict=True))
                raise ValueError(f"{path}: lines {seen[key]} and {reader.line_num} hold the same "
                                 f"cell ({cell}); a results CSV holds each cell once (did two "
                                 "runs write into one folder?). Delete the duplicate lines.")
            seen[key] = reader.line_num
        rows.append(row)
    return rows
