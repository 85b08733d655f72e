"""Every file ecprune writes goes through here: whole files atomically, CSV rows by locked appends.

A whole file (checkpoint, JSON report, pruned model, summary, figure, data cache) is written to a
temporary file in the same folder (``.NAME.<random>.ecprune-partial``), flushed, fsynced and
renamed over ``NAME``, and the folder is fsynced: a reader, or a run resumed after a kill, sees
the old file or the whole new one, never a part. A kill leaves at most a temporary file, which
:func:`remove_partials` clears.

Appends (:func:`locked_append`) hold an exclusive ``flock``, cut off a torn last line (a write a
kill interrupted) before adding anything, and are flushed and fsynced before the lock is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import torch

# Suffix of the temporary files; a file that still carries it was never completed.
PARTIAL_SUFFIX = ".ecprune-partial"

Writer = Callable[[BinaryIO], None]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _temporary(path: Path) -> BinaryIO:
    return tempfile.NamedTemporaryFile(
        mode="wb", dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX,
        delete=False)


def write_files(files: Sequence[tuple[str | Path, Writer]]) -> None:
    """Write every ``(path, write)`` all or nothing: ``write(handle)`` fills a temporary file
    for each, and only when all are complete and on disk are they renamed into place."""
    done: list[tuple[Path, Path]] = []
    try:
        for path, write in files:
            path = Path(path)
            with _temporary(path) as handle:
                done.append((Path(handle.name), path))
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(handle.name, 0o666 & ~_umask())  # NamedTemporaryFile makes it private
        for temporary, path in done:
            os.replace(temporary, path)
    finally:
        for temporary, _ in done:
            temporary.unlink(missing_ok=True)
    for folder in {path.parent for _, path in done}:
        _fsync_folder(folder)


def write_file(path: str | Path, write: Writer) -> Path:
    """Write ``path`` atomically, its content from ``write(binary_handle)``; returns the path."""
    write_files([(path, write)])
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_file(path, lambda handle: handle.write(text.encode()))


def save_torch(obj: object, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return write_file(path, lambda handle: torch.save(obj, handle))


def check_writable(path: str | Path) -> None:
    """OSError unless a file can be written at ``path``: creates and removes the temporary file
    that :func:`write_file` would use (the folder must exist and take new files of that name)."""
    path = Path(path)
    try:
        with _temporary(path) as handle:
            Path(handle.name).unlink()
    except OSError as err:
        raise OSError(f"Cannot write {str(path)!r}: {err.strerror or err}.") from None


def remove_partials(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed writes left directly in ``folder``; returns them.
    Only call it while no other process writes there (e.g. under a folder lock)."""
    removed = sorted(Path(folder).glob(f".*{PARTIAL_SUFFIX}"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def locked_append(path: str | Path) -> Iterator[BinaryIO]:
    """``path`` opened in binary for reading and appending under an exclusive ``flock``, a torn
    last line (no final newline) cut off first, positioned at the end; flushed and fsynced when
    the block ends."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                handle.seek(0)
                handle.truncate(handle.read().rfind(b"\n") + 1)
        handle.seek(0, os.SEEK_END)
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
