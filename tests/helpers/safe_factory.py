"""Small L1C products built from given DN arrays, for the tests of the SAFE reader and the preprocess stage."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio

from snowcloud.bands import BANDS, RESOLUTION_M
from snowcloud.demo.metadata import ProductInfo
from snowcloud.demo.product import write_safe
from snowcloud.demo.tiles import tile_grid
from snowcloud.inventory import product_name


def band_shape(band: str, size: int) -> tuple[int, int]:
    n = size * 10 // RESOLUTION_M[band]
    return n, n


def make_product(
    folder: Path,
    dn: dict[str, np.ndarray],
    *,
    tile: str = "32TNS",
    date: str = "20220201T102209",
    baseline: str = "0400",
    zipped: bool = True,
    crs_of: dict[str, str] | None = None,
) -> Path:
    """Write a product whose bands hold `dn` (uint16 arrays at each band's native resolution, all 13 given);
    the N0400 baseline gets RADIO_ADD_OFFSET -1000 in its metadata. `crs_of` overrides a band's CRS."""
    size = dn["B02"].shape[1]
    grid = tile_grid(tile, size)
    sensing = datetime.strptime(date, "%Y%m%dT%H%M%S")
    name = product_name("S2B", date, baseline, "065", tile, date[:9] + "235959")
    info = ProductInfo(
        name=name,
        mission="S2B",
        tile=tile,
        sensing=sensing,
        generated=sensing.replace(hour=23, minute=59, second=59),
        baseline=f"{baseline[:2]}.{baseline[2:]}",
        orbit=65,
        absolute_orbit=25632,
        radio_add_offset=-1000 if baseline >= "0400" else None,
        epsg=grid.epsg,
        x0=grid.x0,
        y0=grid.y0,
        size=size,
        sun_zenith=65.0,
        sun_azimuth=158.0,
        cloudy_percentage=0.0,
        nodata_percentage=0.0,
    )
    sources = folder / f".bands-{name}"
    sources.mkdir(parents=True)
    files = {}
    for band in BANDS:
        values = np.asarray(dn[band], dtype=np.uint16)
        files[band] = sources / f"{band}.tif"
        resolution = RESOLUTION_M[band]
        with rasterio.open(
            files[band],
            "w",
            driver="GTiff",
            width=values.shape[1],
            height=values.shape[0],
            count=1,
            dtype="uint16",
            crs=(crs_of or {}).get(band, grid.crs),
            transform=grid.transform(resolution),
        ) as out:
            out.write(values, 1)
    return write_safe(folder / f"{name}.zip", info, files, zipped=zipped)


def constant_bands(size: int, value: int = 3000) -> dict[str, np.ndarray]:
    return {band: np.full(band_shape(band, size), value, dtype=np.uint16) for band in BANDS}
