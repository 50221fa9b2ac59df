"""The scene raster `results/scenes/{tile}/{date}.tif`: its format, and every way a stage reads it.

A scene raster is an int16 COG with the 13 L1C bands in `bands.BANDS` order, then `ELEVATION` when the DEM is
on; band descriptions are the band names; `NODATA` (-32768) in every band of a pixel without data. This
module owns that contract: the no-data value and value range, the profile the preprocess stage writes, the
checks of an opened raster, band lookup by name, validity, strip iteration, grid comparison and the tile and
date a scene path stands for. Stages ask it; none re-derives it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from snowcloud.bands import BANDS, ELEVATION

DTYPE = "int16"
NODATA = -32768
VALUE_RANGE = (-32767, 32767)  # valid values saturate here; NODATA is reserved for no data
REFLECTANCE_SCALE = 10000.0  # band values are offset-corrected DN: top-of-atmosphere reflectance = value / 10000
N_BANDS = len(BANDS)
PATH_PATTERN = re.compile(r"(?P<tile>\d{2}[A-Z]{3})/(?P<date>\d{8}T\d{6})\.tif$")
PREPROCESS_TAG = "PREPROCESS_OPTIONS"  # JSON of the preprocess options the scene was made with
IDENTITY_TAGS = ("PRODUCT", "TILE", "SENSING_TIME")  # the product a scene was made from, its tile and date


class SceneError(ValueError):
    """A raster that is not a usable scene raster; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------- the format


def channel_names(elevation: bool) -> list[str]:
    """Band names of a scene raster: the 13 bands, plus ELEVATION when the DEM is used."""
    return [*BANDS, ELEVATION] if elevation else list(BANDS)


def profile(width: int, height: int, elevation: bool, crs, transform) -> dict:
    """The size, type, no-data value and georeference of a scene raster."""
    count = len(channel_names(elevation))
    return dict(width=width, height=height, count=count, dtype=DTYPE, nodata=NODATA, crs=crs, transform=transform)


def identity(path: str | Path) -> tuple[str, str]:
    """(tile, date) of a scene raster from its path .../{tile}/{date}.tif."""
    match = PATH_PATTERN.search(Path(path).as_posix())
    if match is None:
        raise SceneError(f"{path}: not a scene raster path of the form .../{{tile}}/{{date}}.tif")
    return match["tile"], match["date"]


def identity_tags(dataset: rasterio.DatasetReader) -> dict[str, str]:
    """The product name, tile and sensing time an opened scene raster records (what a mask made from it copies)."""
    tags = dataset.tags()
    return {key: tags[key] for key in IDENTITY_TAGS if key in tags}


def recorded_preprocess(path: str | Path) -> dict | None:
    """The preprocess options a scene raster was made with (its PREPROCESS_TAG); None if it has none."""
    with rasterio.open(path) as src:
        tag = src.tags().get(PREPROCESS_TAG)
    return json.loads(tag) if tag else None


def check_scene(src: rasterio.DatasetReader, elevation: bool, source: str) -> list[str]:
    """The channel names to read from an open scene raster (checks dtype, nodata, band count and names)."""
    if src.dtypes[0] != DTYPE or src.nodata != NODATA:
        raise SceneError(
            f"{source}: not a scene raster (expected {DTYPE} with nodata {NODATA}, got {src.dtypes[0]} "
            f"with nodata {src.nodata})"
        )
    if src.count not in (N_BANDS, N_BANDS + 1):
        raise SceneError(f"{source}: expected {N_BANDS} or {N_BANDS + 1} bands, found {src.count}")
    expected = channel_names(elevation=True)[: src.count]
    described = [d for d in src.descriptions if d]
    if described and list(src.descriptions) != expected:
        raise SceneError(f"{source}: band names {list(src.descriptions)} are not {expected}")
    if elevation and src.count == N_BANDS:
        raise SceneError(f"{source}: elevation is requested but the scene has no {ELEVATION} band")
    return channel_names(elevation)


def band_indexes(src: rasterio.DatasetReader, names: list[str] | tuple[str, ...], needed_by: str) -> list[int]:
    """1-based indexes of the named bands in a scene raster (found by band description); a missing band is an
    error naming the scene, the bands and `needed_by` (what needs them)."""
    described = list(src.descriptions)
    missing = [name for name in names if name not in described]
    if missing:
        raise SceneError(
            f"scene {src.name} lacks band(s) {', '.join(missing)} that {needed_by} needs "
            f"(scene bands: {', '.join(str(name) for name in described)})"
        )
    return [described.index(name) + 1 for name in names]


def check_same_grid(a: rasterio.DatasetReader, b: rasterio.DatasetReader) -> None:
    """Raise if two rasters do not share CRS, transform and size (the message names both)."""
    if (a.crs, a.transform, a.shape) != (b.crs, b.transform, b.shape):
        raise SceneError(
            f"{a.name} ({a.crs}, {a.shape}, origin {a.transform.c}, {a.transform.f}) and {b.name} "
            f"({b.crs}, {b.shape}, origin {b.transform.c}, {b.transform.f}) are not on the same grid"
        )


# ----------------------------------------------------------------------------------------------- validity

# L1C products mark no data with DN 0 (Special_Values NODATA in the metadata), in every band at once outside the
# swath. B10 (cirrus, 1375 nm) sees little but the water vapour above the ground: over dark water and in deep
# shadow it reads DN 0 in valid pixels (products of baselines before 04.00, without the +1000 offset), so its 0
# is a value; whether a pixel holds data is decided by the other bands (all of which read DN > 0 there).
ZERO_IS_VALUE_BANDS = ("B10",)


def product_band_valid(band: str, dn: np.ndarray) -> np.ndarray:
    """Which pixels of an L1C band (DN on its native grid) hold data: DN > 0, or every pixel for a band in
    ZERO_IS_VALUE_BANDS (its validity comes from the other bands)."""
    if band in ZERO_IS_VALUE_BANDS:
        return np.ones(dn.shape, bool)
    return dn > 0


def store_values(values: np.ndarray, out: np.ndarray, saturate: bool = True) -> None:
    """float32 values -> the int16 scene values `out`: saturated to VALUE_RANGE (unless the caller knows they lie within),
    rounded to the nearest integer in the same pass as the cast."""
    if saturate:
        np.clip(values, *VALUE_RANGE, out=values)
    np.rint(values, out=out, casting="unsafe")


def valid_pixels(values: np.ndarray, nodata: float | None = NODATA) -> np.ndarray:
    """(H, W) mask of the pixels where every band of (C, H, W) raster values holds data (all, without nodata)."""
    if nodata is None:
        return np.ones(values.shape[1:], bool)
    return np.all(values != nodata, axis=0)


def values_and_valid(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scene raster values (C, H, W) as float32, and where every channel holds data."""
    return raw.astype(np.float32), valid_pixels(raw)


def read_bands(
    src: rasterio.DatasetReader, names: tuple[str, ...], window: Window, needed_by: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named bands of a scene in a window, and where all of them hold data."""
    values = src.read(band_indexes(src, names, needed_by), window=window)
    return dict(zip(names, values)), valid_pixels(values, src.nodata)


def valid_mask(src: rasterio.DatasetReader, channels: int) -> np.ndarray:
    """bool (H, W): pixels where every one of the first `channels` bands holds data, read block row by block row."""
    valid = np.empty((src.height, src.width), dtype=bool)
    for window in block_strips(src):
        rows = slice(window.row_off, window.row_off + window.height)
        strip = src.read(indexes=list(range(1, channels + 1)), window=window)
        np.all(strip != NODATA, axis=0, out=valid[rows])
    return valid


# ----------------------------------------------------------------------------------------------- strips


def row_strips(height: int, width: int, rows: int) -> Iterator[Window]:
    """Full-width windows of `rows` rows covering a raster top to bottom (see :func:`block_strips` for reads of
    a tiled multi-band scene raster)."""
    for row in range(0, height, rows):
        yield Window(0, row, width, min(rows, height - row))


def block_strips(src: rasterio.DatasetReader, top: int = 0, bottom: int | None = None) -> Iterator[Window]:
    """Full-width windows covering rows top..bottom, cut at the raster's block rows.

    Read this way every block is decompressed once: full-width reads that split a row of blocks make GDAL
    decompress those blocks again for the next read (measured: 16 reads of 32 rows of a pixel-interleaved,
    512-row-block GeoTIFF take 25 times one read of the 512 rows).
    """
    bottom = src.height if bottom is None else bottom
    block_height = src.block_shapes[0][0]
    row = top
    while row < bottom:
        end = min((row // block_height + 1) * block_height, bottom)
        yield Window(0, row, src.width, end - row)
        row = end


def sub_strips(rows: int, step: int) -> Iterator[slice]:
    """Row slices of `step` rows covering 0..rows (to bound the temporaries of work on a strip)."""
    for row in range(0, rows, step):
        yield slice(row, min(row + step, rows))
