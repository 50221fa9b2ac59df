"""Where the demo's scenes lie in their tiles. At real scale (demo.scale: real) each tile's scenes are one window
of demo.size pixels of the real-size tile, the same on every date: over a valley side with a small lake a little
below the winter snow line, so that each scene holds snow, open water and snow-free ground at their real sizes.
The window does not depend on the dates: adding a date leaves the other scenes as they were.
The scale model's scenes are the whole tile."""

from __future__ import annotations

import math

import numpy as np

from snowcloud.demo.landscape import FULL_EXTENT_M, Lake, Landscape, rng_for
from snowcloud.demo.tiles import TileGrid, tile_grid

WINDOW_ALIGN_M = 60  # windows start on the tile's 60 m grid: every band's pixels are those of the whole tile
WINTER_SNOWLINE_M = 1020.0  # the snow line windows are chosen for: the default dates' mean seasonal snow line
LAKE_BELOW_SNOWLINE_M = (100.0, 400.0)  # the window's lake lies this far below it
LAKE_RADIUS = (0.05, 0.1)  # and has a radius of this share of the window's width (1-3 % of its area),
LAKE_RADIUS_M = (60.0, 90.0)  # or of these if larger (small windows)
SNOW_SHARE = (0.15, 0.65)  # share of the window more than SNOW_MARGIN_M above that snow line
GROUND_SHARE = 0.2  # least share of the window more than SNOW_MARGIN_M below it
SNOW_MARGIN = (100.0, 0.05)  # metres, or this share of the window's width in metres if less (small windows)
PROBE_POINTS = 48  # the window's terrain is judged on PROBE_POINTS x PROBE_POINTS points


def scene_grid(demo: dict, tile: str, landscape: Landscape) -> TileGrid:
    """The 10 m grid of a tile's demo scenes: the whole (scale-model) tile, or its window at real scale."""
    whole = tile_grid(tile, demo["size"])
    if landscape.scale == "model" or demo["size"] * 10 >= FULL_EXTENT_M:
        return whole
    return window_grid(landscape, tile, demo["size"], WINTER_SNOWLINE_M)


def window_grid(landscape: Landscape, tile: str, size: int, snowline_m: float) -> TileGrid:
    """A window of `size` pixels of the real-size tile holding a small lake (LAKE_RADIUS_*) LAKE_BELOW_SNOWLINE_M
    below the snow line at its downhill side, with SNOW_SHARE of its area above the snow line and GROUND_SHARE
    below (SNOW_MARGIN away from it): the lakes of the tile are tried in an order drawn from the seed and the
    tile, and the first that fits is taken (or, if none does, the one that comes closest: small windows)."""
    whole = tile_grid(tile, int(FULL_EXTENT_M) // 10)
    tarns = next(lattice for lattice in landscape.lattices if lattice.name == "tarn")
    extent = size * 10.0
    left, bottom, right, top = whole.bounds
    cells = [
        (i, j)
        for i in range(math.floor(left / tarns.spacing), math.ceil(right / tarns.spacing))
        for j in range(math.floor(bottom / tarns.spacing), math.ceil(top / tarns.spacing))
    ]
    best = None  # (fit, grid) of the window that comes closest, taken if none fits
    for index in rng_for(landscape.seed, "window", tile).permutation(len(cells)):
        lake = landscape.lake_in_cell(*cells[index], tarns)
        if (
            lake is None
            or not LAKE_BELOW_SNOWLINE_M[0] <= snowline_m - lake.level <= LAKE_BELOW_SNOWLINE_M[1]
            or not max(LAKE_RADIUS[0] * extent, LAKE_RADIUS_M[0]) <= lake.radius
            or lake.radius > max(LAKE_RADIUS[1] * extent, LAKE_RADIUS_M[1])
        ):
            continue
        # The lake at the window's downhill side, whole inside; the rest of the window climbs the valley side.
        centre = np.array([lake.x, lake.y]) + (extent / 2 - 2 * lake.radius) * _uphill(landscape, lake, extent / 4)
        grid = TileGrid(
            tile=tile,
            epsg=whole.epsg,
            x0=whole.x0 + _aligned(centre[0] - extent / 2 - whole.x0, FULL_EXTENT_M - extent),
            y0=whole.y0 - _aligned(whole.y0 - centre[1] - extent / 2, FULL_EXTENT_M - extent),
            size=size,
        )
        fit = _fit(landscape, grid, snowline_m)
        if fit >= 0:
            return grid
        if best is None or fit > best[0]:
            best = (fit, grid)
    if best is None:
        raise ValueError(
            f"demo: no lake of tile {tile} lies under the snow line ({snowline_m:.0f} m) and fits a window of {size} "
            "pixels: choose another demo.seed, demo.size or demo.dates"
        )
    return best[1]


def _aligned(offset: float, largest: float) -> float:
    """An offset (m) from the tile's edge put on the 60 m grid and inside the tile."""
    return float(np.clip(round(offset / WINDOW_ALIGN_M) * WINDOW_ALIGN_M, 0, largest))


def _uphill(landscape: Landscape, lake: Lake, step: float) -> np.ndarray:
    """Unit vector up the terrain at a lake, from the elevation `step` metres away on either side."""
    dx = np.array([lake.x + step, lake.x - step, lake.x, lake.x])
    dy = np.array([lake.y, lake.y, lake.y + step, lake.y - step])
    east, west, north, south = landscape.raw_elevation_points(dx, dy)
    gradient = np.array([east - west, north - south], dtype=float)
    return gradient / max(float(np.hypot(*gradient)), 1e-9)


def _fit(landscape: Landscape, grid: TileGrid, snowline_m: float) -> float:
    """How well the window's shares of snow and snow-free ground meet SNOW_SHARE and GROUND_SHARE: >= 0 if they
    do, the (negative) shortfall if not."""
    left, bottom, right, top = grid.bounds
    x, y = np.meshgrid(np.linspace(left, right, PROBE_POINTS), np.linspace(top, bottom, PROBE_POINTS))
    elevation = landscape.elevation_at(x, y)
    margin = min(SNOW_MARGIN[0], SNOW_MARGIN[1] * grid.size * 10)
    snow = float(np.mean(elevation > snowline_m + margin))
    ground = float(np.mean(elevation < snowline_m - margin))
    return min(snow - SNOW_SHARE[0], SNOW_SHARE[1] - snow, ground - GROUND_SHARE)
