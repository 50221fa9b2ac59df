"""The masks as a STAC collection (pystac, with rio-stac for each raster's footprint and projection), for the
tools users map and analyse with (QGIS, xarray with odc-stac or stackstac, a STAC browser).

A collection folder holds `collection.json` and, per mask, `{tile}/{date}.json` (the item) beside its assets
`{tile}/{date}.tif` (the mask), `{tile}/{date}_proba.tif` (the probabilities, when written) and
`{tile}/{date}.png` (the quicklook, as the item's overview, when there is one); every link and
asset href is relative, so the folder can be moved or copied to object storage as it is. An item's geometry and
bbox are the raster's footprint in WGS84 (densified along its edges), `proj:` its EPSG code, transform and shape,
`datetime` the sensing time; the properties name the product, the model's SHA-256 and the experiment; the mask
asset carries the class table (`classification:classes`: value, name, colour, and the pixels of each class the
mask recorded when it was written).

The workflow's catalogue `results/stac/{experiment}` links the masks of `results/predictions/{experiment}` into
its folder (hard links, a copy across file systems) and is replaced whole; `snowcloud predict --stac` writes the
items beside its masks and `collection.json` in its output folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.stac_io import DefaultStacIO
from rio_stac import create_stac_item

from snowcloud.atomic import atomic_output, scratch_folder
from snowcloud.inventory import sensing_time
from snowcloud.labels import IGNORE_INDEX, class_colours
from snowcloud.mask import class_counts, mask_identity, probabilities_path

log = logging.getLogger(__name__)

COLLECTION_FILE = "collection.json"
GEOMETRY_POINTS = 21  # points added along each edge of a footprint before it is reprojected to WGS84
NO_DATA_CLASS = "no_data"
# Item properties that say where a mask came from: the scene's product and the model that made it.
PROVENANCE_PROPERTIES = {
    "PRODUCT": "snowcloud:product",
    "model_sha256": "snowcloud:model_sha256",
    "experiment": "snowcloud:experiment",
}


class AtomicStacIO(DefaultStacIO):
    """pystac's file writing, each file under a temporary name renamed on success (snowcloud.atomic)."""

    def write_text_to_href(self, href: str, txt: str) -> None:
        with atomic_output(href) as tmp:
            tmp.write_text(txt)


def class_table(tags: dict[str, str], path: str | Path) -> list[Classification]:
    """The mask's classes (value, name, colour, pixels and their share of the mask) and its no-data value."""
    counts = class_counts(tags, path)
    colours = class_colours(counts.classes)
    entries = list(zip(range(len(counts.classes)), counts.classes, counts.counts)) + [
        (IGNORE_INDEX, NO_DATA_CLASS, counts.nodata)
    ]
    return [
        Classification.create(
            value=value,
            name=name,
            color_hint="".join(f"{c:02X}" for c in colours[value]),
            count=count,
            percentage=100 * count / counts.pixels if counts.pixels else 0.0,
            nodata=True if value == IGNORE_INDEX else None,
        )
        for value, name, count in entries
    ]


def mask_item(mask: str | Path, folder: str | Path, collection_id: str, quicklook: bool = False) -> pystac.Item:
    """The item of a mask whose assets are (or will be) `folder/{tile}/{date}.tif`, `_proba.tif` when the mask
    has probabilities beside it, and with `quicklook` the overview `{date}.png`; read from the mask's header and
    tags only."""
    tile, date = mask_identity(mask)
    href = Path(folder).resolve() / tile / f"{date}.tif"
    with rasterio.open(mask) as dataset:
        tags = dataset.tags()
        properties = {name: tags[tag] for tag, name in PROVENANCE_PROPERTIES.items() if tag in tags}
        item = create_stac_item(
            dataset,
            input_datetime=sensing_time(date),
            id=f"{tile}_{date}",
            collection=collection_id,
            properties={"snowcloud:tile": tile, **properties},
            asset_name="mask",
            asset_roles=["data"],
            asset_media_type=pystac.MediaType.COG,
            asset_href=str(href),
            geom_densify_pts=GEOMETRY_POINTS,
        )
        projection = ProjectionExtension.ext(item, add_if_missing=True)
        projection.apply(
            epsg=dataset.crs.to_epsg(),
            transform=list(dataset.transform)[:6],
            shape=[dataset.height, dataset.width],
            bbox=list(dataset.bounds),
        )
        resolution = dataset.res[0]
    item.assets["mask"].title = "class mask"
    raster_bands(
        item.assets["mask"],
        [RasterBand.create(data_type=DataType.UINT8, nodata=IGNORE_INDEX, spatial_resolution=resolution)],
    )
    ClassificationExtension.ext(item.assets["mask"], add_if_missing=True).classes = class_table(tags, mask)
    if probabilities_path(mask).exists():
        probabilities = pystac.Asset(
            str(probabilities_path(href)),
            title="class probabilities (probability = value / 255, a band per class)",
            media_type=pystac.MediaType.COG,
            roles=["data"],
        )
        item.add_asset("probabilities", probabilities)
        band = RasterBand.create(data_type=DataType.UINT8, spatial_resolution=resolution, scale=1 / 255)
        raster_bands(probabilities, [band] * len(class_counts(tags, mask).classes))
    if quicklook:
        overview = pystac.Asset(
            str(href.with_suffix(".png")),
            title="false-colour scene beside the mask",
            media_type=pystac.MediaType.PNG,
            roles=["overview"],
        )
        item.add_asset("overview", overview)
    item.set_self_href(str(href.with_suffix(".json")))
    return item


def raster_bands(asset: pystac.Asset, bands: list[RasterBand]) -> None:
    """The raster extension's band table of an asset (data type, no-data value, resolution: what loaders such as
    odc-stac read instead of opening the file)."""
    RasterExtension.ext(asset, add_if_missing=True).bands = bands


def mask_collection(
    masks: list[str | Path], folder: str | Path, collection_id: str, description: str, quicklooks: bool = False
) -> pystac.Collection:
    """A self-contained collection of the masks' items, rooted at `folder/collection.json` (with `quicklooks`,
    each item has its overview)."""
    items = [mask_item(mask, folder, collection_id, quicklooks) for mask in masks]
    if not items:
        raise ValueError(f"no mask to catalogue in {folder}")
    collection = pystac.Collection(
        id=collection_id,
        description=description,
        extent=pystac.Extent.from_items(items),
        license="other",
        catalog_type=pystac.CatalogType.SELF_CONTAINED,
    )
    collection.add_items(items)
    collection.set_self_href(str(Path(folder).resolve() / COLLECTION_FILE))
    for item in items:  # add_items moved them under the collection's layout: back beside their assets
        item.set_self_href(item.assets["mask"].href.removesuffix(".tif") + ".json")
    collection.make_all_asset_hrefs_relative()
    return collection


def save_collection(collection: pystac.Collection, dest: str | Path | None = None) -> None:
    """Write the items, then collection.json, each file atomically (into `dest` instead of the collection's own
    folder when given)."""
    collection.save(
        pystac.CatalogType.SELF_CONTAINED, dest_href=None if dest is None else str(dest), stac_io=AtomicStacIO()
    )


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link of `source` at `target` (no space used), or a copy where they are on different file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def asset_files(mask: Path) -> Iterator[Path]:
    """The files of a mask's item: the mask, and its probabilities when they were written."""
    yield mask
    if probabilities_path(mask).exists():
        yield probabilities_path(mask)


def build_catalogue(masks: list[str], folder: str, experiment: str, quicklooks: list[str] | None = None) -> None:
    """The workflow's `stac` job: results/stac/{experiment} with the masks (and their `quicklooks`, in the same
    order) linked in, built in a scratch folder and put in place whole."""
    folder_path = Path(folder)
    description = f"snowcloud masks of the experiment {experiment}"
    collection = mask_collection(masks, folder_path, experiment, description, quicklooks is not None)
    with scratch_folder(folder_path, label="building") as scratch:
        for mask in map(Path, masks):
            tile, _ = mask_identity(mask)
            for file in asset_files(mask):
                link_or_copy(file, scratch / tile / file.name)
        for mask, quicklook in zip(masks, quicklooks or []):
            tile, date = mask_identity(mask)
            link_or_copy(Path(quicklook), scratch / tile / f"{date}.png")
        save_collection(collection, scratch)
        if folder_path.exists():
            shutil.rmtree(folder_path)
        scratch.rename(folder_path)
    log.info("STAC collection of %d masks -> %s", len(masks), folder_path / COLLECTION_FILE)
