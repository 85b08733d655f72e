"""One run at a time per results folder: an exclusive ``flock`` on ``OUT/.ecprune.lock``.

The lock file holds who took it (pid, host, start time, command), so a second run can say who
holds the folder. The kernel drops the lock when its holder exits, even by ``kill -9``; a stale
file is simply locked again. The holder deletes the file when it is done.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

LOCK_NAME = ".ecprune.lock"


class FolderBusy(RuntimeError):
    """Another process holds the results folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not written its name yet)"
    return (f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}"
            f" ({info.get('command', '?')})")


class FolderLock:
    """Context manager: hold ``folder``'s lock or raise :class:`FolderBusy` naming the holder.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as out, FolderLock(out):
    ...     try:
    ...         FolderLock(out).__enter__()
    ...     except FolderBusy as err:
    ...         print("is in use by pid" in str(err))
    True
    """

    def __init__(self, folder: str | Path, *, command: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command or " ".join(["ecprune", *sys.argv[1:]])
        self._handle = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise FolderBusy(f"The results folder {str(self.folder)!r} is in use by "
                                 f"{_holder(self.path)}; wait for that run to end, or choose "
                                 "another --out.") from None
            if self._is_current(handle):
                break
            handle.close()  # the holder deleted the file between our open and lock: again
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        handle.truncate(0)
        handle.write(json.dumps(info) + "\n")
        handle.flush()
        self._handle = handle
        return self

    def _is_current(self, handle) -> bool:
        try:
            return os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        self._handle.close()
        self._handle = None
