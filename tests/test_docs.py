"""The examples in the README and the user guides run, in order, as written.

Per page, in a fresh temporary folder: ```python blocks are executed in one shared namespace;
a block preceded by ``<!-- file: NAME -->`` is written to NAME instead; in ```bash blocks,
each command that starts with ``ecprune`` is run as ``python -m ecprune`` in a subprocess and
must exit 0 (other lines, e.g. ``make demo``, are skipped). Blocks in other languages (```text,
```sh) are shown, not run. Before a page runs, its folder holds ``model.pt`` (a pickled
64-32-10 PReLU Sequential) and ``inputs.npy`` (1000 inputs), for pages whose examples start
from a user's files.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/prune-your-model.md", "docs/read-the-report.md",
         "docs/reproduce.md", "docs/sparse-inference.md"]
BLOCK = re.compile(r"(?:<!-- file: (?P<file>[\w.\-]+) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```",
                   re.DOTALL)


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, file name or None) of every fenced block, in order."""
    return [(m["lang"], m["code"], m["file"]) for m in BLOCK.finditer(page.read_text())]


def commands(code: str) -> list[list[str]]:
    """The ``ecprune`` commands of a bash block (backslash continuations joined)."""
    joined = code.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines()
            if line.strip().startswith("ecprune ")]


def prepare(folder: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.PReLU(), nn.Linear(32, 10))
    torch.save(model, folder / "model.pt")
    np.save(folder / "inputs.npy", np.random.default_rng(0).normal(size=(1000, 64))
            .astype(np.float32))


# One thread: on a shared 2-core machine, OpenMP threads spinning against other jobs make small
# training loops many times slower (measured 48 s with 2 threads against 2 s with 1).
THREADS = 1


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def run_command(argv: list[str], folder: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    result = subprocess.run([sys.executable, "-m", "ecprune", *argv[1:]], cwd=folder,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stderr}"


def test_every_page_has_examples():
    for page in PAGES:
        assert blocks(ROOT / page), page


def test_the_readme_quick_start_is_the_two_make_commands():
    first = next(code for lang, code, _ in blocks(ROOT / "README.md") if lang == "bash")
    assert [line.split()[:2] for line in first.splitlines()] == [["make", "demo"],
                                                                 ["make", "test"]]


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as for a script run from that folder
    modules = set(sys.modules)
    prepare(tmp_path)
    namespace: dict = {"__name__": "__doc_example__"}
    try:
        for lang, code, file in blocks(ROOT / page):
            if file is not None:
                (tmp_path / file).write_text(code)
            elif lang == "python":
                # dont_inherit: run as a user script would, not under this file's __future__
                exec(compile(code, f"{page} example", "exec", dont_inherit=True), namespace)
            elif lang == "bash":
                for argv in commands(code):
                    run_command(argv, tmp_path)
    finally:
        for name in set(sys.modules) - modules:  # modules imported from tmp_path
            if str(getattr(sys.modules[name], "__file__", "")).startswith(str(tmp_path)):
                del sys.modules[name]


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", ["README.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_point_to_files_that_exist(page):
    """Every relative link of the README and the docs pages names a file or folder of the repo
    (anchors aside; web links are not checked)."""
    path = ROOT / page
    targets = [m[1].split("#")[0] for m in LINK.finditer(path.read_text())]
    missing = [t for t in targets if t and not re.match(r"[a-z]+:", t)
               and not (path.parent / t).exists()]
    assert not missing, f"{page} links to missing files: {missing}"
