"""The shard and dataset_stats rules under Snakemake: built once, rebuilt for exactly what changed.

The scene rasters are written by the test (as the preprocess stage would), beside empty raw products with an
old mtime, so Snakemake plans no preprocess job.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.rasters import synthetic_scene, write_label, write_scene
from helpers.workflow_runs import jobs_by_rule, old_empty_file, planned_jobs, product_name, snakemake

pytest.importorskip("snowcloud.demo", reason="common.smk imports snowcloud.demo")
pytestmark = pytest.mark.workflow

TILE = "32TNS"
DATES = ["20210111T102309", "20210720T101559", "20211008T101829"]

CONFIG = """
raw_data: raw
dem: dem/T{{tile}}.tif
labels: labels/T{{tile}}/{{date}}.tif
demo: {{enabled: false}}
datasets:
  d:
    normalisation: snowcloud-v1
    patch_size: 16
    sampler: {{method: class-balanced, patches_per_date: 6, seed: {seed}}}
    split: {{method: date, validation_dates: [{validation}]}}
experiments:
  e: {{dataset: d}}
"""


def write_config(root: Path, seed: int = 0, validation: str = DATES[1]) -> None:
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "config.yaml").write_text(CONFIG.format(seed=seed, validation=validation))


def write_scene_and_label(root: Path, date: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    write_scene(root / "results" / "scenes" / TILE / f"{date}.tif", synthetic_scene(rng, 40, 36))
    write_label(root / "labels" / f"T{TILE}" / f"{date}.tif", rng.choice(np.arange(4, dtype=np.uint8), size=(40, 36)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workflow")
    write_config(root)
    old_empty_file(root / "dem" / f"T{TILE}.tif")
    for date in DATES:
        old_empty_file(root / "raw" / product_name(TILE, date))
    for seed, date in enumerate(DATES):
        write_scene_and_label(root, date, seed)
    return root


def planned(root: Path, target: str = "datasets") -> dict[str, list[str]]:
    """Rule -> outputs of the jobs a dry run plans."""
    return jobs_by_rule(planned_jobs(root, target))


def shard(date: str) -> str:
    return f"results/shards/d/{TILE}/{date}.h5"


def test_shards_are_built_once_and_rebuilt_for_what_changed(workdir):
    assert set(planned(workdir)["shard"]) == {shard(date) for date in DATES}
    assert "preprocess" not in planned(workdir)
    snakemake(workdir, "--cores", "2", "datasets")
    stats = json.loads((workdir / "results/datasets/d/stats.json").read_text())
    assert [entry["shard"] for entry in stats["dates"]] == [shard(date) for date in DATES]
    assert stats["split"]["validation_dates"] == [DATES[1]]
    assert (workdir / "results/datasets/d/class_distribution.png").stat().st_size > 0
    assert planned(workdir) == {}, "a second run has nothing to do"

    mtimes = {date: (workdir / shard(date)).stat().st_mtime_ns for date in DATES}
    write_scene_and_label(workdir, DATES[1], seed=10)  # new scene and label content for one date
    jobs = planned(workdir)
    assert jobs["shard"] == [shard(DATES[1])] and "dataset_stats" in jobs
    snakemake(workdir, "--cores", "2", "datasets")
    assert (workdir / shard(DATES[1])).stat().st_mtime_ns > mtimes[DATES[1]]
    assert all((workdir / shard(d)).stat().st_mtime_ns == mtimes[d] for d in (DATES[0], DATES[2]))

    write_label(workdir / "labels" / f"T{TILE}" / f"{DATES[2]}.tif", np.zeros((40, 36), np.uint8))  # a label only
    assert planned(workdir)["shard"] == [shard(DATES[2])]
    snakemake(workdir, "--cores", "2", "datasets")

    write_config(workdir, validation=DATES[0])  # the split is a stats option: no shard is rebuilt
    assert set(planned(workdir)) == {"dataset_stats"}
    write_config(workdir, seed=1)  # the sampler is a shard option: every shard is rebuilt
    assert set(planned(workdir)["shard"]) == {shard(date) for date in DATES}
