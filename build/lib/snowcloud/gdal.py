"""GDAL settings shared by the stages that read and write rasters."""

from __future__ import annotations

import rasterio


def gdal_env(cache_mb: int, **options: str) -> rasterio.Env:
    """A rasterio environment whose GDAL block cache holds `cache_mb` megabytes.

    rasterio hands GDAL_CACHEMAX to GDAL in bytes, so a bare 512 would be a 512-byte cache that makes GDAL
    decode every block again on each read.
    """
    return rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20, **options)
