"""Fixed facts of Sentinel-2 L1C and of the class encoding, shared by every stage."""

from __future__ import annotations

# Channel order everywhere (scene rasters, shards, models): the 13 L1C bands, then the DEM.
BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
ELEVATION = "ELEVATION"

# Native ground sampling distance of each band in metres.
RESOLUTION_M: dict[str, int] = {
    "B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
    "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20,
}  # fmt: skip

# Label classes; 255 marks pixels that are not labelled (ignored in training and metrics) or have no data.
CLASSES: tuple[str, ...] = ("background", "snow", "cloud", "water")
IGNORE_INDEX = 255

# Colours (RGB) of the classes in prediction colour tables and plots.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (60, 120, 40),
    1: (240, 250, 255),
    2: (160, 160, 175),
    3: (30, 90, 200),
    IGNORE_INDEX: (0, 0, 0),
}


def class_colour_table() -> dict[int, tuple[int, int, int, int]]:
    """Colour table of the class mask: class colours opaque, no data transparent."""
    return {value: (*rgb, 0 if value == IGNORE_INDEX else 255) for value, rgb in CLASS_COLOURS.items()}
