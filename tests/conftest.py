"""Shared fixtures. Tests make all their data themselves; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (Snakefile, config/, workflow/)."""
    return REPO


@pytest.fixture(scope="session")
def user_demo(tmp_path_factory):
    """The README's first command run once per session: a plain install, the repository copied, the default demo
    run there (helpers.user_install). Tests that write into its work directory work on a copy."""
    from helpers.user_install import run_user_demo

    return run_user_demo(tmp_path_factory.mktemp("user"))


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> dict:
    """A tiny embedded demo, made once per session: 2 tiles x 2 dates (one per processing baseline: N0301 without,
    N0400 with the -1000 offset), 120 x 120 pixels of the scale model, seed 2023. Returns {"demo": the config section, "raw_data",
    "dem", "labels": path patterns as in the config, "products": {(tile, date): inventory.Product}}.
    Shared by many tests: copy files before changing them."""
    from snowcloud.demo import make_demo_data, planned_products

    root = tmp_path_factory.mktemp("tiny_demo")
    demo = {
        "enabled": True,
        "tiles": ["32TNS", "32TMS"],
        "dates": ["20211208T102421", "20220201T102209"],
        "size": 120,
        "seed": 2023,
        "scale": "model",  # the whole tile: every class in 120 pixels
    }
    paths = {
        "raw_data": str(root / "raw"),
        "dem": str(root / "dem" / "T{tile}.tif"),
        "labels": str(root / "labels" / "T{tile}" / "{date}.tif"),
    }
    make_demo_data(demo, paths["raw_data"], paths["dem"], paths["labels"])
    return {"demo": demo, **paths, "products": planned_products(demo, paths["raw_data"])}
