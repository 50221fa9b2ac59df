"""The season table and plot: the class shares of every tile and date from the counts the masks recorded when
they were written, checked against a recount of the masks, over a season of 120 tiny masks."""

from __future__ import annotations

import csv
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers.rasters import write_mask

from snowcloud.labels import IGNORE_INDEX
from snowcloud.mask import MaskError, read_class_counts
from snowcloud.season import SeasonError, season_rows, write_season, write_season_table

CLASSES = ["background", "snow", "cloud", "water"]
TILES = ["32TNS", "32TMS"]
DATES_PER_TILE = 60
OPTIONS = {"snow_classes": ["snow"], "cloud_classes": ["cloud", "thin_cloud"]}


def season_dates(count: int) -> list[str]:
    start = datetime(2021, 10, 1, 10, 22, 9)
    return [(start + timedelta(days=3 * i)).strftime("%Y%m%dT%H%M%S") for i in range(count)]


def random_mask(rng: np.random.Generator, index: int) -> np.ndarray:
    """Classes in random proportions and a no-data band of varying height; every 20th date wholly cloud."""
    weights = rng.dirichlet(np.ones(len(CLASSES)))
    classes = rng.choice(len(CLASSES), size=(16, 24), p=weights).astype(np.uint8)
    classes[: index % 7] = IGNORE_INDEX
    if index % 20 == 0:
        classes[classes != IGNORE_INDEX] = CLASSES.index("cloud")
    return classes


@pytest.fixture(scope="module")
def season(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("season")
    rng = np.random.default_rng(7)
    masks = []
    for tile in TILES:
        for i, date in enumerate(season_dates(DATES_PER_TILE)):
            masks.append(write_mask(root / "predictions" / tile / f"{date}.tif", random_mask(rng, i), CLASSES))
    return masks


def recount(mask: Path) -> np.ndarray:
    with rasterio.open(mask) as dataset:
        return np.bincount(dataset.read(1).ravel(), minlength=256)


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_mask_writer_records_the_counts_of_what_it_wrote(season):
    for mask in season[:10]:
        counts, recounted = read_class_counts(mask), recount(mask)
        assert counts.classes == CLASSES
        assert counts.counts == recounted[: len(CLASSES)].tolist()
        assert counts.nodata == recounted[IGNORE_INDEX] and counts.pixels == recounted.sum()


def test_season_table_shares_sum_to_one_and_match_a_recount_of_every_mask(season, tmp_path):
    table = tmp_path / "season.csv"
    write_season_table(season_rows(season), table, OPTIONS)
    rows = read_table(table)
    assert len(rows) == len(TILES) * DATES_PER_TILE
    assert [(r["tile"], r["date"]) for r in rows] == sorted((m.parent.name, m.stem) for m in season)
    by_key = {(m.parent.name, m.stem): m for m in season}
    for row in rows:
        counts = recount(by_key[(row["tile"], row["date"])])
        valid = counts[: len(CLASSES)].sum()
        assert math.isclose(sum(float(row[name]) for name in CLASSES), 1.0, rel_tol=1e-9)
        for k, name in enumerate(CLASSES):
            assert math.isclose(float(row[name]), counts[k] / valid)
        assert math.isclose(float(row["no_data"]), counts[IGNORE_INDEX] / counts.sum())
        assert int(row["pixels"]) == counts.sum() and int(row["valid_pixels"]) == valid
        cloud = counts[CLASSES.index("cloud")]
        assert math.isclose(float(row["cloud_cover"]), cloud / valid)
        if valid > cloud:
            assert math.isclose(float(row["snow_cover"]), counts[CLASSES.index("snow")] / (valid - cloud))
        else:
            assert row["snow_cover"] == "", "a wholly cloudy date has no cloud-free pixel to find snow on"
        assert row["split"] == ""


def test_split_roles_of_labelled_dates_without_a_training_split_are_unknown(season):
    labelled = [f"{m.parent.name}/{m.stem}" for m in season[:3]]
    roles = [row.split for row in season_rows(season, labelled=labelled)]
    assert roles.count("unknown") == 3 and roles.count("") == len(season) - 3


def test_season_job_writes_the_table_and_a_plot(season, tmp_path):
    table, plot = tmp_path / "season" / "demo.csv", tmp_path / "season" / "demo.png"
    write_season([str(m) for m in season], str(table), str(plot), {}, "demo")
    assert len(read_table(table)) == len(season)
    with rasterio.open(plot) as png:  # a real PNG of the figure's size
        assert (png.width, png.height) == (1000, 600)
    assert sorted(p.name for p in table.parent.iterdir()) == ["demo.csv", "demo.png"], "no temporaries left"


def test_a_mask_without_counts_is_named_with_what_to_do(tmp_path):
    mask = tmp_path / "32TNS" / "20220201T102209.tif"
    mask.parent.mkdir()
    with rasterio.open(mask, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as dataset:
        dataset.write(np.zeros((1, 4, 4), np.uint8))
        dataset.update_tags(classes='["background"]')
    with pytest.raises(MaskError, match=f"{mask}.*rerun its inference"):
        season_rows([mask])


def test_masks_of_models_with_other_classes_are_not_mixed(season, tmp_path):
    other = write_mask(tmp_path / "32TNS" / "20220202T102209.tif", np.zeros((4, 4), np.uint8), ["land", "snow"])
    with pytest.raises(SeasonError, match=f"other classes.*{season[0]} has .*{other} has \\['land', 'snow'\\]"):
        season_rows([season[0], other])
