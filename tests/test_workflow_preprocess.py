"""Snakemake on a tiny demo: the demo and preprocess rules make the scene rasters, once."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
import yaml

from snowcloud.bands import BANDS

pytestmark = pytest.mark.workflow


def snakemake(repo: Path, workdir: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(repo / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


TINY = {
    "demo": {"enabled": True, "tiles": ["32TNS"], "dates": ["20211208T102421", "20220201T102209"], "size": 120},
    "preprocess": {"resampling": "cubic", "block_rows": 60},
    "datasets": {},
    "experiments": {},
}


def test_demo_to_scene_rasters_then_nothing_to_do(repo, tmp_path):
    write_config(tmp_path, TINY)
    first = snakemake(repo, tmp_path, "scenes")
    assert first.returncode == 0, first.stderr[-3000:]
    for date in TINY["demo"]["dates"]:
        with rasterio.open(tmp_path / "results" / "scenes" / "32TNS" / f"{date}.tif") as scene:
            assert scene.count == 14 and scene.descriptions[: len(BANDS)] == BANDS
            assert scene.tags()["DEM"] == "resources/demo/dem/T32TNS.tif"
    assert (tmp_path / "logs" / "preprocess" / "32TNS" / "20220201T102209.log").read_text().count("done in") == 1
    again = snakemake(repo, tmp_path, "scenes", "-n")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr


def test_two_products_for_one_scene_stop_the_workflow_naming_both(repo, tmp_path, tiny_demo):
    raw = tmp_path / "raw"
    raw.mkdir()
    product = tiny_demo["products"][("32TNS", "20220201T102209")].path
    reprocessed = raw / product.name.replace("_N0400_", "_N0510_").replace("T130622", "T170000")
    shutil.copy(product, raw / product.name)
    shutil.copy(product, reprocessed)
    write_config(
        tmp_path,
        {"raw_data": str(raw), "dem": tiny_demo["dem"], "demo": {"enabled": False}, "experiments": {}, "datasets": {}},
    )
    result = snakemake(repo, tmp_path, "scenes", "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "two products for tile 32TNS and date 20220201T102209" in output
    assert product.name in output and reprocessed.name in output


def test_unknown_config_key_stops_the_workflow(repo, tmp_path):
    write_config(tmp_path, {**TINY, "preprocess": {"resampeling": "cubic"}})
    result = snakemake(repo, tmp_path, "scenes", "-n")
    assert result.returncode != 0
    assert "unknown key 'preprocess.resampeling' (did you mean 'resampling'?)" in result.stdout + result.stderr
