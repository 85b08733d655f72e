"""The command line's dispatcher and ``info``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ecprune.cli import main


def test_info_prints_versions(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ecprune 0." in out and "torch" in out and "digits" in out


def test_help_has_examples():
    result = subprocess.run([sys.executable, "-m", "ecprune", "--help"],
                            capture_output=True, text=True, check=True)
    assert "examples:" in result.stdout


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
