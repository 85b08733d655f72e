"""ecprune.atomic: whole files all or nothing, torn appends cut, output folders probed."""

from __future__ import annotations

import ast

import pytest
import torch

from ecprune import atomic
from ecprune.experiments.store import ResultsStore, read_rows
from test_layout import modules


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic.write_text(tmp_path / "report.json", "old\n")

    def fail(handle):
        handle.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_file(path, fail)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_several_files_are_written_all_or_nothing(tmp_path):
    def fail(handle):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_files([(tmp_path / "model.pt", lambda h: torch.save({}, h)),
                            (tmp_path / "model.json", fail)])
    assert list(tmp_path.iterdir()) == []
    atomic.write_files([(tmp_path / "a", lambda h: h.write(b"a")),
                        (tmp_path / "b", lambda h: h.write(b"b"))])
    assert (tmp_path / "a").read_bytes() + (tmp_path / "b").read_bytes() == b"ab"


def test_partials_of_killed_writes_are_recognised_and_removed(tmp_path):
    (tmp_path / f".x.csv.abc{atomic.PARTIAL_SUFFIX}").write_bytes(b"cut")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    removed = atomic.remove_partials(tmp_path)
    assert [p.name for p in removed] == [f".x.csv.abc{atomic.PARTIAL_SUFFIX}"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tmp"]


def test_a_torn_csv_row_is_never_read_and_cut_before_the_next_append(tmp_path):
    row = {"experiment": "e", "variant": "", "arch": "2-2-1", "seed": 0, "method": "ecp",
           "ratio": "0.5", "phase": "prune", "test_loss": 1.0}
    store = ResultsStore(tmp_path / "r.csv")
    store.append([row])
    with open(store.path, "a") as handle:
        handle.write("e,,2-2-1,0,ecp,0.6,prune,1,2,3,0.12")  # a kill inside the loss' digits
    assert [r["ratio"] for r in read_rows(store.path)] == ["0.5"]
    store.append([{**row, "ratio": "0.7"}])
    assert [r["ratio"] for r in read_rows(store.path)] == ["0.5", "0.7"]
    assert store.path.read_text().count("\n") == 3


def test_check_writable_names_the_path_and_leaves_nothing(tmp_path):
    atomic.check_writable(tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match=r"Cannot write '.*x': File name too long"):
        atomic.check_writable(tmp_path / ("x" * 300))


# Calls that write a whole file, and where else writing is allowed: atomic.py itself, and the
# lock file, which must stay one inode (experiments/lock.py).
SAVES = {"save", "savez", "savez_compressed"}  # of torch and numpy
PATH_WRITES = {"write_text", "write_bytes", "savetxt", "tofile"}
OS_WRITES = {"replace", "rename"}
ALLOWED = {"ecprune.atomic", "ecprune.experiments.lock"}


def _writes(node: ast.Call) -> bool:
    func = node.func
    method = func.attr if isinstance(func, ast.Attribute) else None
    name = method or getattr(func, "id", "")
    owner = getattr(getattr(func, "value", None), "id", None)
    if (name in SAVES and owner in ("torch", "np", "numpy")) or name == "savefig":
        # allowed into the handle that an ecprune.atomic writer receives
        target = node.args[1 if name == "save" else 0] if node.args else None
        return not (isinstance(target, ast.Name) and target.id == "handle")
    if method in PATH_WRITES:
        return True
    if method in OS_WRITES:
        return owner == "os"
    mode = node.args[1] if name == "open" and len(node.args) > 1 else None
    return isinstance(mode, ast.Constant) and bool(set(str(mode.value)) & set("wax+"))


def file_writes(tree: ast.AST) -> list[int]:
    """Lines of calls that write a file other than through :mod:`ecprune.atomic`."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and _writes(node)]


def test_every_file_is_written_through_the_atomic_helper():
    found = {name: lines for name, path in modules().items() if name not in ALLOWED
             if (lines := file_writes(ast.parse(path.read_text())))}
    assert found == {}
    caught = file_writes(ast.parse("torch.save(m, path)\nopen(p, 'w')\np.write_text('x')\n"
                                   "os.replace(a, b)\nfig.savefig(handle)\ns.replace(a, b)\n"
                                   "write_text(p, 'x')\nopen(p)\n"))
    assert sorted(caught) == [1, 2, 3, 4]
