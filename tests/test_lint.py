"""The lint pyproject.toml configures runs: `ruff check` and `ruff format --check` over the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_finds_nothing_to_change(command):
    done = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"ruff {' '.join(command)} . (run `ruff format .` / `ruff check --fix .`):\n"
        + (done.stdout + done.stderr)[-6000:]
    )
