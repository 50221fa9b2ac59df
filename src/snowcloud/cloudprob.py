"""s2cloudless cloud probability and cloud mask of a scene raster, strip by strip, in bounded memory.

The `s2cloudless` package (Sentinel Hub's per-pixel LightGBM cloud detector; it ships its model and runs offline)
is run on a scene raster made by `preprocess` (int16, offset-corrected, reflectance = value / 10000, band order
and names of `bands.BANDS`, nodata in every band where the scene has no data).

API (keyword arguments are the settings; a config section such as `evaluation.s2cloudless` is passed as
``**options``; the defaults are the thesis's, THESIS.md §4: ``S2PixelCloudDetector(threshold=0.4,
average_over=4, dilation_size=2, all_bands=True)`` on all 13 bands at 10 m, DN / 10000)::

    cloud_strips(scene, *, threshold=0.4, average_over=4, dilation_size=2, all_bands=True, resolution_m=10,
                 strip_rows=512, threads=0) -> Iterator[CloudStrip]

yields, top to bottom, `CloudStrip(row, probability, mask, valid)` for scene rows row..row + n: `probability`
float32 (n, width) in 0..1 (0 where not valid), `mask` bool (n, width): the s2cloudless cloud mask (probability
averaged over a disk of radius `average_over`, thresholded at `threshold` (> threshold is cloud), dilated by a disk
of radius `dilation_size`; False where not valid), `valid` bool (n, width): where the scene has data. All arrays
are on the scene's 10 m grid. `average_over` / `dilation_size` of 0 skip that step.

- `resolution_m` (a multiple of the scene's pixel size, e.g. 10, 20, 60): s2cloudless runs on the scene averaged
  over blocks of resolution_m / pixel size (valid pixels only); probability and mask are repeated back onto the
  scene grid. `average_over` and `dilation_size` are in pixels *of that resolution*, as in s2cloudless.
- `strip_rows`: scene rows per strip (rounded down to whole blocks). Memory is about 13 bands x (strip_rows + halo)
  x width x (2 + 4) bytes, LightGBM's features (10 bands of the working pixels, float32, copied once by
  s2cloudless) and a 384 MB GDAL block cache: a peak RSS of 1.4 GB was measured for a 10980-wide scene at 60 m
  and 512 rows (any height); at 10 m the features of a strip add about 0.5 GB. Each strip is computed with a halo
  of average_over + dilation_size working pixels above and below, so the mask equals that of s2cloudless on the
  whole scene (same border handling at the scene's edges).
- `threads`: LightGBM threads (0: OpenMP's default, all cores).

`cloud_probability(reflectance, all_bands)` and `cloud_mask(probability, threshold, average_over, dilation_size)`
are the two steps on arrays: reflectance (H, W, 13 or 10) float32 -> probability (H, W); probability -> bool mask.
`scene_reflectance(values, nodata)` turns int16 scene values (C, H, W) into reflectance (H, W, C) (negative values
after the offset as 0) and the valid mask.

Errors: a scene without the needed bands raises `scene.SceneError` (naming the bands); a `resolution_m` that is not
a multiple of the scene's pixel size raises `CloudProbabilityError`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from snowcloud import scene as scene_raster
from snowcloud.bands import BANDS
from snowcloud.gdal import gdal_env

# The 10 bands the s2cloudless model reads when `all_bands` is False (B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12).
MODEL_BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")
# GDAL block cache while reading (GDAL's default is 5 % of the RAM): two rows of 512 x 512 tiles of a 14-band
# 10980-wide scene, so the halo rows that neighbouring strips share are decoded once.
GDAL_CACHE_MB = 384
THESIS_SETTINGS = {"threshold": 0.4, "average_over": 4, "dilation_size": 2, "all_bands": True, "resolution_m": 10}


class CloudProbabilityError(ValueError):
    """A scene or a setting s2cloudless cannot be run with; the message names the scene or the setting."""


@dataclass
class CloudStrip:
    """s2cloudless output for scene rows row..row + n on the scene grid."""

    row: int
    probability: np.ndarray  # float32 (n, width), 0..1, 0 where not valid
    mask: np.ndarray  # bool (n, width), False where not valid
    valid: np.ndarray  # bool (n, width)


@functools.cache
def detector(all_bands: bool):
    """The s2cloudless detector (its LightGBM model is loaded once per process)."""
    from s2cloudless import S2PixelCloudDetector

    return S2PixelCloudDetector(all_bands=all_bands)


def cloud_probability(reflectance: np.ndarray, all_bands: bool = True, threads: int = 0) -> np.ndarray:
    """s2cloudless cloud probability (H, W) float32 of reflectance (H, W, 13) (all_bands) or (H, W, 10)."""
    model = detector(all_bands)
    options = {"num_threads": threads} if threads > 0 else {}
    return model.get_cloud_probability_maps(reflectance[np.newaxis], **options)[0]


def cloud_mask(probability: np.ndarray, threshold: float, average_over: int, dilation_size: int) -> np.ndarray:
    """s2cloudless cloud mask (H, W) bool of a probability map: averaged over a disk of radius `average_over`
    (mirrored at the borders), > threshold, dilated by a disk of radius `dilation_size`; 0 skips a step. The
    steps of `S2PixelCloudDetector.get_mask_from_prob` (whose threshold-only path fails in OpenCV 5)."""
    import cv2
    from s2cloudless.utils import cv2_disk

    probability = probability.astype(np.float32, copy=False)
    if average_over:
        disk = cv2_disk(int(average_over))
        probability = cv2.filter2D(probability, -1, disk / np.sum(disk), borderType=cv2.BORDER_REFLECT)
    mask = (probability > threshold).astype(np.uint8)
    if dilation_size:
        mask = cv2.dilate(mask, cv2_disk(int(dilation_size)))
    return mask.astype(bool)


def scene_reflectance(values: np.ndarray, nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (H, W, C) float32 of int16 scene values (C, H, W), negatives as 0, 0 where not valid; and
    the valid mask (H, W): where every band holds data."""
    valid = scene_raster.valid_pixels(values, nodata)
    reflectance = np.moveaxis(values, 0, -1).astype(np.float32, order="C")  # in place from here, no temporaries
    reflectance /= scene_raster.REFLECTANCE_SCALE
    np.maximum(reflectance, 0.0, out=reflectance)
    reflectance[~valid] = 0.0
    return reflectance, valid


def block_mean(reflectance: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the valid pixels over factor x factor blocks of (H, W, C) reflectance (H, W multiples of factor)
    and where a block has any valid pixel."""
    if factor == 1:
        return reflectance, valid
    h, w, c = reflectance.shape
    sums = reflectance.reshape(h // factor, factor, w // factor, factor, c).sum(axis=(1, 3), dtype=np.float32)
    counts = valid.reshape(h // factor, factor, w // factor, factor).sum(axis=(1, 3))
    mean = np.divide(sums, counts[..., None], out=np.zeros_like(sums), where=counts[..., None] > 0)
    return mean, counts > 0


def block_factor(dataset: rasterio.DatasetReader, resolution_m: float) -> int:
    """Scene pixels per side of one working pixel at `resolution_m`."""
    pixel = abs(dataset.transform.a)
    factor = round(resolution_m / pixel)
    if factor < 1 or abs(factor * pixel - resolution_m) > 1e-6 * resolution_m:
        raise CloudProbabilityError(
            f"s2cloudless resolution_m = {resolution_m} is not a multiple of the {pixel} m pixels of {dataset.name}"
        )
    return factor


def read_working(
    dataset: rasterio.DatasetReader, indexes: list[int], first: int, last: int, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (h, w, C) and validity at the working resolution of working rows first..last (the scene's
    partial last block row/column padded with invalid pixels)."""
    top, bottom = first * factor, min(last * factor, dataset.height)
    values = dataset.read(indexes, window=Window(0, top, dataset.width, bottom - top))
    reflectance, valid = scene_reflectance(values, dataset.nodata)
    del values
    pad_rows, pad_cols = (last - first) * factor - (bottom - top), -dataset.width % factor
    if pad_rows or pad_cols:
        reflectance = np.pad(reflectance, ((0, pad_rows), (0, pad_cols), (0, 0)))
        valid = np.pad(valid, ((0, pad_rows), (0, pad_cols)))
    return block_mean(reflectance, valid, factor)


def cloud_strips(
    scene: str | Path,
    *,
    threshold: float = 0.4,
    average_over: int = 4,
    dilation_size: int = 2,
    all_bands: bool = True,
    resolution_m: float = 10,
    strip_rows: int = 512,
    threads: int = 0,
) -> Iterator[CloudStrip]:
    """s2cloudless probability and mask of a scene raster, strip by strip (see the module docstring)."""
    names = BANDS if all_bands else MODEL_BANDS
    halo = int(average_over) + int(dilation_size)
    with gdal_env(GDAL_CACHE_MB), rasterio.open(scene) as dataset:
        indexes = scene_raster.band_indexes(dataset, names, "s2cloudless")
        factor = block_factor(dataset, resolution_m)
        rows = -(-dataset.height // factor)  # working rows
        step = max(1, strip_rows // factor)
        for first in range(0, rows, step):
            last = min(first + step, rows)
            top, bottom = max(0, first - halo), min(rows, last + halo)
            reflectance, valid = read_working(dataset, indexes, top, bottom, factor)
            probability = cloud_probability(reflectance, all_bands, threads)
            del reflectance
            probability[~valid] = 0.0
            mask = cloud_mask(probability, threshold, average_over, dilation_size) & valid
            inner = slice(first - top, last - top)
            working = CloudStrip(first, probability[inner], mask[inner], valid[inner])
            yield working if factor == 1 else to_scene_grid(dataset, working, factor)


def to_scene_grid(dataset: rasterio.DatasetReader, working: CloudStrip, factor: int) -> CloudStrip:
    """A strip of working pixels repeated onto the scene grid (cropped at the scene's last row and column), with
    the scene's own validity there (read from its first band: preprocess writes nodata in every band at once)."""
    row = working.row * factor
    height = min(working.probability.shape[0] * factor, dataset.height - row)

    def expand(array: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)[:height, : dataset.width]

    valid = scene_raster.valid_pixels(dataset.read([1], window=Window(0, row, dataset.width, height)), dataset.nodata)
    probability = np.where(valid, expand(working.probability), 0.0).astype(np.float32)
    return CloudStrip(row, probability, expand(working.mask) & valid, valid)
