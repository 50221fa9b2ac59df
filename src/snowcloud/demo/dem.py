"""The demo elevation model: the analytic terrain sampled on a geographic (EPSG:4326) 1 arcsecond grid covering the
scenes of a tile (the whole tile, or its window at real scale)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.warp import transform, transform_bounds
from rasterio.windows import Window

from snowcloud.atomic import atomic_output
from snowcloud.demo.landscape import Landscape
from snowcloud.demo.tiles import TileGrid

ARCSECOND = 1 / 3600
DEM_CRS = "EPSG:4326"
DEM_NODATA = -32768.0
MARGIN_ARCSECONDS = 6  # beyond the tile on every side, so any resampling kernel is covered
ROWS_PER_STRIP = 256


def dem_grid(grid: TileGrid) -> tuple[Affine, int, int]:
    """Transform, width and height of a 1 arcsecond grid, aligned to whole arcseconds, covering the grid."""
    west, south, east, north = transform_bounds(grid.crs, DEM_CRS, *grid.bounds, densify_pts=51)
    west = math.floor(west * 3600 - MARGIN_ARCSECONDS)
    east = math.ceil(east * 3600 + MARGIN_ARCSECONDS)
    south = math.floor(south * 3600 - MARGIN_ARCSECONDS)
    north = math.ceil(north * 3600 + MARGIN_ARCSECONDS)
    return Affine(ARCSECOND, 0, west / 3600, 0, -ARCSECOND, north / 3600), east - west, north - south


def write_dem(landscape: Landscape, grid: TileGrid, path: str | Path) -> None:
    """Write the elevation (float32 metres) of the grid's surroundings as a geographic GeoTIFF."""
    affine, width, height = dem_grid(grid)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs=DEM_CRS,
        transform=affine,
        nodata=DEM_NODATA,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        predictor=3,
    )
    lon = affine.c + (np.arange(width) + 0.5) * affine.a
    with atomic_output(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.set_band_description(1, "elevation")
        dst.units = ("metre",)
        dst.update_tags(SOURCE="snowcloud demo terrain (analytic), sampled at pixel centres")
        for row in range(0, height, ROWS_PER_STRIP):
            rows = min(ROWS_PER_STRIP, height - row)
            lat = affine.f + (row + np.arange(rows) + 0.5) * affine.e
            lons, lats = np.meshgrid(lon, lat)
            xs, ys = transform(DEM_CRS, grid.crs, lons.ravel(), lats.ravel())
            elevation = landscape.elevation_at(np.asarray(xs), np.asarray(ys)).reshape(rows, width)
            dst.write(elevation, 1, window=Window(0, row, width, rows))
