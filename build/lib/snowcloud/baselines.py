"""Trivial per-pixel rules that a trained model has to beat, evaluated on exactly the model's pixels."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from snowcloud.bands import CLASSES, IGNORE_INDEX

BACKGROUND, SNOW, CLOUD, WATER = (CLASSES.index(name) for name in ("background", "snow", "cloud", "water"))

# Scene rasters hold offset-corrected DN: reflectance = value / 10000.
REFLECTANCE_SCALE = 10000.0


@dataclass(frozen=True)
class Baseline:
    """A rule: the scene bands it reads and a function (bands by name, options, valid mask) -> uint8 classes."""

    bands: tuple[str, ...]
    rule: Callable[[Mapping[str, np.ndarray], dict, np.ndarray], np.ndarray]


def reflectance(values: np.ndarray) -> np.ndarray:
    """Top-of-atmosphere reflectance from scene values, negatives (dark pixels after the offset) set to 0."""
    return np.maximum(np.asarray(values, dtype=np.float32) / REFLECTANCE_SCALE, 0.0)


def normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b), 0 where both are 0."""
    total = a + b
    out = np.zeros(np.broadcast(a, b).shape, np.float32)
    np.divide(a - b, total, out=out, where=total > 0)
    return out


def ndsi_rule(bands: Mapping[str, np.ndarray], options: dict, valid: np.ndarray) -> np.ndarray:
    """The NDSI rule (`evaluation.ndsi`), first match wins:

    1. cloud: B02 > cloud_blue and NDSI < snow_ndsi (bright in blue, not snow-like in the SWIR);
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
    cloud = (blue > options["cloud_blue"]) & (ndsi < options["snow_ndsi"])
    # Paint from the lowest to the highest precedence.
    classes[water] = WATER
    classes[snow] = SNOW
    classes[cloud] = CLOUD
    classes[~valid] = IGNORE_INDEX
    return classes


BASELINES: dict[str, Baseline] = {"ndsi": Baseline(bands=("B02", "B03", "B08", "B11"), rule=ndsi_rule)}
