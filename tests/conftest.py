"""Shared fixtures. Tests make all their data themselves; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (Snakefile, config/, workflow/)."""
    return REPO
