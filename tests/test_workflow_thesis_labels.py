"""Thesis label folders ({date}/mask.jp2 + mask_coverage.jp2) under Snakemake: editing either file in place
rebuilds the shard that reads it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers.rasters import synthetic_scene, write_label, write_scene
from helpers.workflow_runs import OLD, TILE, jobs_by_rule, old_empty_file, planned_jobs, product_name, snakemake

pytestmark = pytest.mark.workflow

DATES = ["20210111T102309", "20210720T101559"]
CONFIG = """
raw_data: raw
dem: dem/T{tile}.tif
labels: masks/{date}
demo: {enabled: false}
datasets:
  d:
    patch_size: 16
    sampler: {method: random, patches_per_date: 4, min_labelled_fraction: 0.5}
    split: {method: date, validation_dates: [20210720T101559]}
experiments:
  e: {dataset: d}
"""


def write_thesis_masks(root, date: str) -> None:
    folder = root / "masks" / date
    values = np.random.default_rng(1).choice(np.arange(4, dtype=np.uint8), size=(40, 36))
    write_label(folder / "mask.jp2", values)  # the thesis wrote GeoTIFFs under .jp2 names
    write_label(folder / "mask_coverage.jp2", np.ones((40, 36), np.uint8))


def test_editing_a_thesis_mask_file_in_place_rebuilds_its_shard(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(CONFIG)
    for date in DATES:
        old_empty_file(tmp_path / "raw" / product_name(TILE, date))
        write_scene(
            tmp_path / "results" / "scenes" / TILE / f"{date}.tif", synthetic_scene(np.random.default_rng(0), 40, 36)
        )
        write_thesis_masks(tmp_path, date)
    old_empty_file(tmp_path / "dem" / f"T{TILE}.tif")

    snakemake(tmp_path, "--cores", "2", "shards")
    assert jobs_by_rule(planned_jobs(tmp_path, "shards")) == {}
    coverage = np.ones((40, 36), np.uint8)
    coverage[:, :10] = 0  # an annotator leaves a strip out
    write_label(tmp_path / "masks" / DATES[0] / "mask_coverage.jp2", coverage)
    os.utime(tmp_path / "masks" / DATES[0], (OLD, OLD))  # the folder's own mtime says nothing changed
    assert jobs_by_rule(planned_jobs(tmp_path, "shards"))["shard"] == [f"results/shards/d/{TILE}/{DATES[0]}.h5"]
