"""The STAC collection of the masks: it round-trips through pystac from a moved copy of its folder, every asset
opens with rasterio, every bbox holds its raster's footprint, and the STAC core schemas (which pystac ships)
accept every object. The extension schemas (projection, classification) cannot be fetched here: their fields
are checked by reading them back through pystac's extension classes instead."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pystac
import pytest
import rasterio
from helpers.rasters import write_mask
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from rasterio.warp import transform_bounds

from snowcloud import stac
from snowcloud.labels import IGNORE_INDEX, class_colours
from snowcloud.mask import read_class_counts

CLASSES = ["background", "snow", "cloud", "water"]
TILES = ["32TNS", "32TMS"]
DATES_PER_TILE = 55
PRODUCT = "S2B_MSIL1C_{date}_N0400_R065_T{tile}_{date}.SAFE.zip"
SHA = "0123456789abcdef" * 4


def dates(count: int) -> list[str]:
    start = datetime(2021, 11, 1, 10, 21, 39)
    return [(start + timedelta(days=2 * i)).strftime("%Y%m%dT%H%M%S") for i in range(count)]


@pytest.fixture(scope="module")
def predictions(tmp_path_factory) -> list[Path]:
    """110 masks of two tiles (one in another UTM zone), every tenth with its probabilities."""
    root = tmp_path_factory.mktemp("stac") / "predictions" / "demo"
    rng = np.random.default_rng(3)
    zones = {"32TNS": "EPSG:32632", "32TMS": "EPSG:32631"}
    masks = []
    for tile in TILES:
        for i, date in enumerate(dates(DATES_PER_TILE)):
            classes = rng.integers(0, len(CLASSES), (20, 30)).astype(np.uint8)
            classes[:, : i % 5] = IGNORE_INDEX
            tags = {"PRODUCT": PRODUCT.format(date=date, tile=tile), "model_sha256": SHA, "experiment": "demo"}
            mask = root / tile / f"{date}.tif"
            masks.append(write_mask(mask, classes, CLASSES, tags, probabilities=i % 10 == 0, crs=zones[tile]))
    return masks


@pytest.fixture(scope="module")
def moved_catalogue(predictions, tmp_path_factory) -> Path:
    """The workflow's catalogue, built, then copied elsewhere and the original and the masks removed: what a
    user who uploads the folder gets."""
    root = predictions[0].parents[2].parent
    built, quicklooks = root / "stac" / "demo", []
    for mask in predictions:  # a real PNG per mask, where the workflow writes its quicklooks
        quicklooks.append(root / "quicklooks" / "demo" / mask.parent.name / f"{mask.stem}.png")
        quicklooks[-1].parent.mkdir(parents=True, exist_ok=True)
        plt.imsave(quicklooks[-1], np.random.default_rng(len(quicklooks)).random((8, 12)))
    stac.build_catalogue([str(m) for m in predictions], str(built), "demo", [str(q) for q in quicklooks])
    assert built.joinpath("collection.json").exists()
    for mask in predictions[:3]:
        assert (built / mask.parent.name / mask.name).stat().st_ino == mask.stat().st_ino, "linked, not copied"
    moved = tmp_path_factory.mktemp("elsewhere") / "demo"
    shutil.copytree(built, moved)
    shutil.rmtree(built)
    return moved


def test_collection_round_trips_through_pystac_from_a_moved_folder(moved_catalogue, predictions):
    collection = pystac.Collection.from_file(str(moved_catalogue / "collection.json"))
    items = list(collection.get_items())
    assert len(items) == len(predictions)
    assert {item.id for item in items} == {f"{m.parent.name}_{m.stem}" for m in predictions}
    for item in items:
        tile, date = item.id.split("_")
        assert item.datetime == datetime.strptime(date, "%Y%m%dT%H%M%S").replace(tzinfo=item.datetime.tzinfo)
        assert item.datetime.utcoffset() == timedelta(0)
        assert item.properties["snowcloud:product"] == PRODUCT.format(date=date, tile=tile)
        assert item.properties["snowcloud:model_sha256"] == SHA
        assert Path(item.get_self_href()) == moved_catalogue / tile / f"{date}.json"
    bbox = collection.extent.spatial.bboxes[0]
    assert all(bbox[0] <= item.bbox[0] and item.bbox[2] <= bbox[2] for item in items)


def test_every_asset_opens_and_its_bbox_holds_the_rasters_footprint(moved_catalogue, predictions):
    collection = pystac.Collection.from_file(str(moved_catalogue / "collection.json"))
    with_probabilities = 0
    for item in collection.get_items():
        assert {"mask", "overview"} <= set(item.assets) <= {"mask", "probabilities", "overview"}
        with_probabilities += "probabilities" in item.assets
        overview = item.assets["overview"]
        assert overview.media_type == pystac.MediaType.PNG and overview.roles == ["overview"]
        with rasterio.open(overview.get_absolute_href()) as png:
            assert png.driver == "PNG" and (png.height, png.width) == (8, 12)
        for asset in (item.assets[name] for name in ("mask", "probabilities") if name in item.assets):
            href = asset.get_absolute_href()
            assert Path(href).is_relative_to(moved_catalogue)
            assert asset.media_type == pystac.MediaType.COG and asset.roles == ["data"]
            with rasterio.open(href) as dataset:
                west, south, east, north = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds, densify_pts=51)
                projection = ProjectionExtension.ext(item)
                assert projection.code == f"EPSG:{dataset.crs.to_epsg()}"
                assert projection.shape == [dataset.height, dataset.width]
                assert projection.transform == list(dataset.transform)[:6]
        tolerance = 1e-9
        assert item.bbox[0] <= west + tolerance and item.bbox[1] <= south + tolerance
        assert item.bbox[2] >= east - tolerance and item.bbox[3] >= north - tolerance
    assert with_probabilities == len(TILES) * len(range(0, DATES_PER_TILE, 10))


def test_mask_asset_carries_the_class_table_with_the_recorded_counts(moved_catalogue):
    collection = pystac.Collection.from_file(str(moved_catalogue / "collection.json"))
    colours = class_colours(CLASSES)
    for item in list(collection.get_items())[:20]:
        mask = item.assets["mask"]
        classes = ClassificationExtension.ext(mask).classes
        counts = read_class_counts(mask.get_absolute_href())
        assert [(c.value, c.name) for c in classes] == [*enumerate(CLASSES), (IGNORE_INDEX, "no_data")]
        assert [c.count for c in classes] == [*counts.counts, counts.nodata]
        assert classes[-1].nodata is True
        assert [c.color_hint for c in classes] == ["{:02X}{:02X}{:02X}".format(*colours[c.value]) for c in classes]
        assert sum(c.percentage for c in classes) == pytest.approx(100)


def test_stac_core_schemas_accept_the_collection_and_its_items(moved_catalogue):
    validator = JsonSchemaSTACValidator()  # the core schemas ship with pystac: no network
    collection = pystac.Collection.from_file(str(moved_catalogue / "collection.json"))
    version = pystac.get_stac_version()
    assert validator.validate_core(collection.to_dict(), pystac.STACObjectType.COLLECTION, version)
    for item in list(collection.get_items())[:10]:
        assert validator.validate_core(item.to_dict(), pystac.STACObjectType.ITEM, version)


def test_a_rebuilt_catalogue_replaces_the_old_one_whole(predictions, tmp_path):
    folder = tmp_path / "stac" / "demo"
    stac.build_catalogue([str(m) for m in predictions[:4]], str(folder), "demo")
    stac.build_catalogue([str(m) for m in predictions[2:3]], str(folder), "demo")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    mask = predictions[2]
    assert files == sorted(
        ["collection.json", f"{mask.parent.name}/{mask.stem}.json", f"{mask.parent.name}/{mask.name}"]
    )
    assert [p.name for p in folder.parent.iterdir()] == ["demo"], "no temporaries left"
