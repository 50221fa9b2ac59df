"""Statistics of cloud masks, as the cloud-field literature measures them: objects (connected cloud pixels), the
power-law slope of their size distribution, cover and the share of thin cloud.

Used by the tests that hold the demo generator to the statistics docs/demo.md targets, and by
benchmarks/bench_demo_clouds.py (small-cloud pixels of the validation scenes).
"""

from __future__ import annotations

import math

import numpy as np
import rasterio.features


def cloud_objects(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected objects of a boolean mask (8-connected, as cloud-size studies count them): an int32 map of
    object ids (0 outside, 1..n) and the area of each object in pixels (index 0: the pixels outside)."""
    ids = np.zeros(mask.shape, dtype=np.int32)
    if mask.any():
        shapes = rasterio.features.shapes(mask.astype(np.uint8), mask=mask, connectivity=8)
        objects = ((geometry, number) for number, (geometry, _) in enumerate(shapes, start=1))
        ids = rasterio.features.rasterize(objects, out_shape=mask.shape, fill=0, dtype="int32")
    return ids, np.bincount(ids.ravel())


def equivalent_diameters(areas: np.ndarray, pixel_m: float = 10.0) -> np.ndarray:
    """Diameter (m) of the disc of each object's area (areas in pixels, without the outside at index 0)."""
    return 2 * np.sqrt(np.asarray(areas, dtype=float) / math.pi) * pixel_m


def size_slope(
    diameters: np.ndarray, smallest_m: float, largest_m: float, bins_per_decade: int = 5, least_count: int = 5
) -> float:
    """Exponent b of the number density n(D) ~ D^-b between `smallest_m` and `largest_m`: least squares on
    the log of a histogram in logarithmic bins (counts per metre of diameter); bins with fewer than
    `least_count` objects are left out (DeWitt and Garrett 2024: sparse bins bias the fit)."""
    decades = math.log10(largest_m / smallest_m)
    edges = smallest_m * 10 ** np.linspace(0, decades, max(2, round(decades * bins_per_decade)) + 1)
    counts, _ = np.histogram(diameters, bins=edges)
    kept = counts >= least_count
    if kept.sum() < 3:
        raise ValueError(f"too few cloud objects between {smallest_m} and {largest_m} m for a size slope: {counts}")
    density = counts[kept] / np.diff(edges)[kept]
    centres = np.sqrt(edges[:-1] * edges[1:])[kept]
    slope, _ = np.polyfit(np.log(centres), np.log(density), 1)
    return float(-slope)


def thin_share(opacity: np.ndarray, cloud_from: float, opaque_from: float) -> float:
    """Share of the cloud pixels (opacity >= cloud_from) that are semi-transparent (opacity < opaque_from)."""
    cloud = opacity >= cloud_from
    return float((cloud & (opacity < opaque_from)).sum() / max(int(cloud.sum()), 1))
