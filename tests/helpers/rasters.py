"""Scene rasters and label masks as the workflow lays them out, written by the tests (shared factories)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from snowcloud.bands import BANDS
from snowcloud.scene import NODATA, channel_names

ORIGIN = (499980.0, 5200020.0)  # upper-left corner of tile 32TNS
CRS = "EPSG:32632"
TRANSFORM = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])


def write_scene(path: Path, values: np.ndarray, transform: Affine = TRANSFORM, crs: str = CRS) -> Path:
    """A scene raster as the preprocess stage writes it: int16, band names, nodata -32768, tiled GeoTIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = values.shape
    profile = {
        "driver": "GTiff",
        "dtype": "int16",
        "count": count,
        "height": height,
        "width": width,
        "crs": crs,
        "transform": transform,
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values.astype(np.int16))
        dst.descriptions = channel_names(elevation=True)[:count]
    return path


def synthetic_scene(rng: np.random.Generator, height: int, width: int, elevation: bool = True) -> np.ndarray:
    """Plausible offset-corrected DN: dark land, bright snow/cloud blobs, a few negative values, elevation in m."""
    yy, xx = np.mgrid[0:height, 0:width]
    bright = (np.sin(yy / 9.0) + np.cos(xx / 7.0)) > 0.8
    base = np.where(bright, 8000, 900)[None] + rng.normal(0, 300, (len(BANDS), height, width))
    base[:, ::17, ::13] = -40  # very dark pixels after the -1000 offset
    bands = np.clip(base, -999, 32767)
    if not elevation:
        return bands.astype(np.int16)
    dem = 400 + 3 * yy + 2 * xx + rng.normal(0, 5, (height, width))
    return np.concatenate([bands, dem[None]]).astype(np.int16)


def write_label(
    path: Path,
    values: np.ndarray,
    resolution: float = 10.0,
    origin=ORIGIN,
    crs: str = CRS,
    driver: str = "GTiff",
    **options,
) -> Path:
    """A uint8 label raster (the thesis wrote nodata=0 into its masks; kept here to check it is ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": driver,
        "dtype": values.dtype.name,
        "count": 1,
        "height": values.shape[0],
        "width": values.shape[1],
        "crs": crs,
        "transform": Affine(resolution, 0, origin[0], 0, -resolution, origin[1]),
        "nodata": 0,
        **options,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return path


def write_mask(
    path: Path,
    classes: np.ndarray,
    class_names: list[str],
    tags: dict | None = None,
    probabilities: bool = False,
    transform: Affine = TRANSFORM,
    crs: str = CRS,
) -> Path:
    """A prediction mask written by the inference's own writer from a (H, W) class map (IGNORE_INDEX: no data),
    fed as one-hot probabilities in two row blocks."""
    from snowcloud.labels import IGNORE_INDEX
    from snowcloud.mask import RowBlock, write_prediction

    valid = classes != IGNORE_INDEX
    one_hot = np.stack([(classes == k) & valid for k in range(len(class_names))]).astype(np.float32)
    half = classes.shape[0] // 2
    blocks = [RowBlock(0, one_hot[:, :half], valid[:half]), RowBlock(half, one_hot[:, half:], valid[half:])]
    profile = {"width": classes.shape[1], "height": classes.shape[0], "crs": crs, "transform": transform}
    write_prediction(iter(blocks), profile, path, list(class_names), tags or {}, probabilities)
    return path
