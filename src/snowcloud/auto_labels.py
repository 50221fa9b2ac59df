"""Automatic label masks of a scene raster: the thesis's `auto_annotation` (THESIS.md section 4), configurable.

Layers are painted in the thesis's order, a later layer winning over an earlier one:

1. water (3): a surface-water raster (value 1, e.g. JRC) when `surface_water` is given, else NDWI
   (B03 - B08) / (B03 + B08) > `water_ndwi`;
2. snow (1) from a glacier raster (value 1, e.g. RGI v6) when `glacier` is given;
3. snow (1) where NDSI (B03 - B11) / (B03 + B11) > `snow_ndsi` and B03 > `snow_green` (the thesis read the snow
   class of ExoLabs, a commercial product; the NDSI rule stands in for it);
4. cloud (2): the s2cloudless mask on all 13 bands at 10 m (`snowcloud.cloudprob`, threshold 0.4, averaging 4,
   dilation 2 in the thesis).

Everything else is background (0). The coverage, what the mask labels, is the scene's valid pixels inside a
border of `border_pixels` (the thesis left 8192 m out on each side in era B); outside it the mask is 255 (not
labelled), which is how snowcloud's label format carries the thesis's `mask_coverage`. The result is a uint8
GeoTIFF on the scene's grid that `labels.read_label` reads like any label mask.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from snowcloud import cloudprob, labels
from snowcloud import scene as scenes
from snowcloud.atomic import atomic_output
from snowcloud.baselines import CLOUD, SNOW, WATER, normalised_difference, reflectance
from snowcloud.config import validated
from snowcloud.inventory import scene_path
from snowcloud.labels import IGNORE_INDEX

log = logging.getLogger(__name__)

RULE_BANDS = ("B03", "B08", "B11")
CLOUD_OPTIONS = {
    "cloud_threshold": "threshold",
    "cloud_average_over": "average_over",
    "cloud_dilation": "dilation_size",
}


def paint(
    bands: dict[str, np.ndarray],
    cloud: np.ndarray,
    covered: np.ndarray,
    options: dict,
    glacier: np.ndarray | None = None,
    surface_water: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 classes of one block from the scene values of B03, B08, B11, the cloud mask and the optional
    glacier / surface-water layers (1 = present), 255 outside `covered`; layers painted in the thesis's order."""
    green, nir, swir = (reflectance(bands[name]) for name in RULE_BANDS)
    classes = np.zeros(cloud.shape, np.uint8)
    water = (
        surface_water == 1 if surface_water is not None else normalised_difference(green, nir) > options["water_ndwi"]
    )
    classes[water] = WATER
    if glacier is not None:
        classes[glacier == 1] = SNOW
    classes[(normalised_difference(green, swir) > options["snow_ndsi"]) & (green > options["snow_green"])] = SNOW
    classes[cloud] = CLOUD
    classes[~covered] = IGNORE_INDEX
    return classes


def border_mask(rows: slice, shape: tuple[int, int], border: int) -> np.ndarray:
    """bool (len(rows), width): True inside the frame of `border` pixels along the scene's edges."""
    height, width = shape
    row = np.arange(rows.start, rows.stop)[:, None]
    col = np.arange(width)[None, :]
    return (row >= border) & (row < height - border) & (col >= border) & (col < width - border)


def auxiliary_layer(pattern: str | None, tile: str, scene: str | Path, window: Window) -> np.ndarray | None:
    """A glacier or surface-water raster ({tile} filled in) on `window` of the scene grid, or None."""
    if pattern is None:
        return None
    return labels.read_on_grid(scene_path(pattern, tile), labels.scene_grid(scene), window)


def auto_label(scene: str | Path, output: str | Path, options: dict, threads: int = 1) -> dict[str, float]:
    """Scene raster -> automatic label mask (uint8 GeoTIFF, 255 = not labelled); returns the class fractions of
    the labelled pixels. The tile is read from the output path (results/auto_labels/{tile}/{date}.tif)."""
    options = validated(options, "auto_labels")
    tile, _ = scenes.identity(output)
    cloud_options = {CLOUD_OPTIONS[key]: options[key] for key in CLOUD_OPTIONS}
    counts = np.zeros(256, np.int64)
    with rasterio.open(scene) as src:
        indexes = scenes.band_indexes(src, RULE_BANDS, "the automatic labels")
        profile = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "count": 1,
            "dtype": "uint8",
            "crs": src.crs,
            "transform": src.transform,
            "nodata": IGNORE_INDEX,
            "compress": "deflate",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
        }
        shape = (src.height, src.width)
        with atomic_output(output) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for strip in cloudprob.cloud_strips(scene, threads=threads, **cloud_options):
                n = strip.mask.shape[0]
                window = Window(0, strip.row, src.width, n)
                values = src.read(indexes, window=window)
                covered = strip.valid & border_mask(slice(strip.row, strip.row + n), shape, options["border_pixels"])
                classes = paint(
                    dict(zip(RULE_BANDS, values)),
                    strip.mask,
                    covered,
                    options,
                    glacier=auxiliary_layer(options["glacier"], tile, scene, window),
                    surface_water=auxiliary_layer(options["surface_water"], tile, scene, window),
                )
                counts += np.bincount(classes.ravel(), minlength=256)
                dst.write(classes, 1, window=window)
            dst.update_tags(source="snowcloud auto_labels", **{key: str(value) for key, value in options.items()})
    labelled = counts[:4].sum()
    fractions = {str(c): float(counts[c] / labelled) if labelled else 0.0 for c in range(4)}
    log.info("%s: automatic labels of %s, class fractions %s", output, scene, fractions)
    return fractions
