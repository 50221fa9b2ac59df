"""Fixed facts of Sentinel-2 L1C, shared by every stage (the classes: snowcloud.labels)."""

from __future__ import annotations

# Channel order everywhere (scene rasters, shards, models): the 13 L1C bands, then the DEM.
BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
ELEVATION = "ELEVATION"

# Native ground sampling distance of each band in metres.
RESOLUTION_M: dict[str, int] = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B10": 60,
    "B11": 20,
    "B12": 20,
}
