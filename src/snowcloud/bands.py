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

# Central wavelength of each band in nm (Sentinel-2A MSI spectral response, ESA; S2B's differ by at most a few nm).
WAVELENGTH_NM: dict[str, float] = {
    "B01": 442.7,
    "B02": 492.4,
    "B03": 559.8,
    "B04": 664.6,
    "B05": 704.1,
    "B06": 740.5,
    "B07": 782.8,
    "B08": 832.8,
    "B8A": 864.7,
    "B09": 945.1,
    "B10": 1373.5,
    "B11": 1613.7,
    "B12": 2202.4,
}
