"""Georeference of Sentinel-2 tiles: UTM zone and upper-left corner from the MGRS tile id."""

from __future__ import annotations

import re
from dataclasses import dataclass

from affine import Affine

# MGRS letters: latitude bands (8 degrees from 80 S) and 100 km square letters (I and O are never used).
_LATITUDE_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_COLUMN_SETS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")  # indexed by zone % 3
_TILE_EXTENT_M = 109_800
_METRES_PER_DEGREE_LATITUDE = 110_900  # mean meridian arc; only used to pick the 2000 km row-letter cycle

# Upper-left corners of real tiles, where known exactly (from the Sentinel-2 tiling grid).
KNOWN_CORNERS: dict[str, tuple[float, float]] = {
    "32TNS": (499_980.0, 5_200_020.0),
    "32TMS": (399_960.0, 5_200_020.0),
}


@dataclass(frozen=True)
class TileGrid:
    """The 10 m grid of a (demo) tile: CRS, upper-left corner and size in 10 m pixels."""

    tile: str
    epsg: int
    x0: float
    y0: float
    size: int

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def transform(self, resolution: int = 10) -> Affine:
        return Affine(resolution, 0.0, self.x0, 0.0, -resolution, self.y0)

    def shape(self, resolution: int = 10) -> tuple[int, int]:
        """(rows, cols) at a native resolution of 10, 20 or 60 m."""
        n = self.size * 10 // resolution
        return n, n

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in map units."""
        extent = self.size * 10.0
        return self.x0, self.y0 - extent, self.x0 + extent, self.y0


def parse_tile(tile: str) -> tuple[int, str, str, str]:
    """Split an MGRS tile id like 32TNS into (zone, latitude band, column letter, row letter)."""
    match = re.fullmatch(r"(\d{2})([C-X])([A-Z])([A-V])", tile)
    if not match or match[2] not in _LATITUDE_BANDS or not 1 <= int(match[1]) <= 60:
        raise ValueError(f"'{tile}' is not an MGRS tile id (e.g. 32TNS)")
    zone = int(match[1])
    if match[3] not in _COLUMN_SETS[zone % 3] or match[4] not in _ROW_LETTERS:
        raise ValueError(f"'{tile}': 100 km square letters {match[3]}{match[4]} do not exist in UTM zone {zone}")
    return zone, match[2], match[3], match[4]


def upper_left_corner(tile: str) -> tuple[float, float]:
    """The tile's upper-left corner in its UTM zone: exact for the tiles in KNOWN_CORNERS, else derived.

    Derived: the 100 km MGRS square's west edge (shifted 0, 40 or 20 m west as the Sentinel-2 grid does) and its
    north edge + 20 m; the row-letter cycle (2000 km) is the one that puts the square in the latitude band.
    """
    if tile in KNOWN_CORNERS:
        return KNOWN_CORNERS[tile]
    zone, band, column, row = parse_tile(tile)
    square = _COLUMN_SETS[zone % 3].index(column) + 1  # 100 km squares east of the zone origin
    x0 = square * 100_000 - (0, 40, 20)[square % 3]
    row_offset = 5 if zone % 2 == 0 else 0
    bottom = ((_ROW_LETTERS.index(row) - row_offset) % 20) * 100_000
    band_south = -80 + 8 * _LATITUDE_BANDS.index(band)
    band_middle = (band_south + 4) * _METRES_PER_DEGREE_LATITUDE + (10_000_000 if band_south < 0 else 0)
    cycle = round((band_middle - bottom - 50_000) / 2_000_000)
    return float(x0), float(bottom + cycle * 2_000_000 + 100_000 + 20)


def utm_epsg(tile: str) -> int:
    zone, band, _, _ = parse_tile(tile)
    return (32600 if band >= "N" else 32700) + zone


def tile_grid(tile: str, size: int) -> TileGrid:
    """The 10 m grid of a tile with `size` x `size` pixels (10980 for a whole tile), anchored at its real corner."""
    if size % 6:
        raise ValueError(f"demo size {size} is not a multiple of 6 (the 60 m bands need size / 6 pixels)")
    if size > _TILE_EXTENT_M // 10:
        raise ValueError(f"demo size {size} exceeds a Sentinel-2 tile (10980 pixels)")
    x0, y0 = upper_left_corner(tile)
    return TileGrid(tile=tile, epsg=utm_epsg(tile), x0=x0, y0=y0, size=size)
