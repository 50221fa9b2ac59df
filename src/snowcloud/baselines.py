"""Baselines a trained model has to beat, evaluated on exactly the model's pixels: the NDSI rule (per pixel) and
s2cloudless (Sentinel Hub's cloud detector) as its cloud test. Each yields class rows of a scene raster top to
bottom, strip by strip (bounded memory); `StripRows` hands them out in the evaluation's windows."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from snowcloud import cloudprob
from snowcloud.labels import CLASSES, IGNORE_INDEX
from snowcloud.scene import REFLECTANCE_SCALE, block_strips, read_bands

BASELINE_CLASSES = CLASSES  # what every baseline predicts: the thesis's classes, matched by name in evaluation
BACKGROUND, SNOW, CLOUD, WATER = (CLASSES.index(name) for name in ("background", "snow", "cloud", "water"))


def reflectance(values: np.ndarray) -> np.ndarray:
    """Top-of-atmosphere reflectance from scene values, negatives (dark pixels after the offset) set to 0."""
    return np.maximum(np.asarray(values, dtype=np.float32) / REFLECTANCE_SCALE, 0.0)


def normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b), 0 where both are 0."""
    total = a + b
    out = np.zeros(np.broadcast(a, b).shape, np.float32)
    np.divide(a - b, total, out=out, where=total > 0)
    return out


def ndsi_rule(
    bands: Mapping[str, np.ndarray], options: dict, valid: np.ndarray, cloud: np.ndarray | None = None
) -> np.ndarray:
    """The NDSI rule (`evaluation.ndsi`), first match wins:

    1. cloud: B02 > cloud_blue and NDSI < snow_ndsi (bright in blue, not snow-like in the SWIR), or the given
       `cloud` mask instead of that test (the s2cloudless baseline);
    2. snow: NDSI = (B03 - B11) / (B03 + B11) > snow_ndsi and B03 > snow_green;
    3. water: NDWI = (B03 - B08) / (B03 + B08) > water_ndwi;
    4. background otherwise; IGNORE_INDEX outside `valid`.

    Cloud and snow exclude each other through the NDSI; snow is tested before water because clear water has
    a high NDSI too but is dark in green, while bright, wet or shaded snow can pass the NDWI test.
    """
    blue, green, nir, swir = (reflectance(bands[name]) for name in ("B02", "B03", "B08", "B11"))
    ndsi = normalised_difference(green, swir)
    ndwi = normalised_difference(green, nir)
    classes = np.full(ndsi.shape, BACKGROUND, np.uint8)
    water = ndwi > options["water_ndwi"]
    snow = (ndsi > options["snow_ndsi"]) & (green > options["snow_green"])
    if cloud is None:
        cloud = (blue > options["cloud_blue"]) & (ndsi < options["snow_ndsi"])
    # Paint from the lowest to the highest precedence.
    classes[water] = WATER
    classes[snow] = SNOW
    classes[cloud] = CLOUD
    classes[~valid] = IGNORE_INDEX
    return classes


NDSI_BANDS = ("B02", "B03", "B08", "B11")

# A baseline: (scene raster, the `evaluation` options, threads) -> class rows (uint8, IGNORE_INDEX where the
# scene has no data) top to bottom, in strips of any height.
Baseline = Callable[[str | Path, dict, int], Iterator[np.ndarray]]


def ndsi_strips(scene: str | Path, options: dict, threads: int = 1) -> Iterator[np.ndarray]:
    """The NDSI rule on a scene raster, block row by block row."""
    with rasterio.open(scene) as src:
        for window in block_strips(src):
            bands, valid = read_bands(src, NDSI_BANDS, window, "the ndsi baseline")
            yield ndsi_rule(bands, options["ndsi"], valid)


def s2cloudless_strips(scene: str | Path, options: dict, threads: int = 1) -> Iterator[np.ndarray]:
    """s2cloudless's cloud mask (`evaluation.s2cloudless`) as the cloud test of the NDSI rule: cloud scores are
    s2cloudless's alone; snow, water and background come from the NDSI rule's other tests, so that its macro
    scores compare with the others'."""
    with rasterio.open(scene) as src:
        for strip in cloudprob.cloud_strips(scene, **options["s2cloudless"], threads=threads):
            window = Window(0, strip.row, src.width, strip.valid.shape[0])
            bands, valid = read_bands(src, NDSI_BANDS, window, "the s2cloudless baseline")
            yield ndsi_rule(bands, options["ndsi"], valid & strip.valid, cloud=strip.mask)


BASELINES: dict[str, Baseline] = {"ndsi": ndsi_strips, "s2cloudless": s2cloudless_strips}


class StripRows:
    """The rows of a strip iterator handed out in chunks of any height (strips of one height, windows of another);
    holds at most one strip beside the chunk."""

    def __init__(self, strips: Iterator[np.ndarray]):
        self.strips = strips
        self.pending: np.ndarray | None = None

    def take(self, rows: int) -> np.ndarray:
        """The next `rows` rows."""
        parts, have = [], 0
        while have < rows:
            if self.pending is None or len(self.pending) == 0:
                self.pending = next(self.strips)
            part, self.pending = self.pending[: rows - have], self.pending[rows - have :]
            parts.append(part)
            have += len(part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
