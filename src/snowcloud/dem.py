"""A DEM of any CRS on a scene's 10 m grid: opened and checked once, reprojected strip by strip (the preprocess
stage's ELEVATION band), its coverage of the tile estimated before the heavy work and counted during it."""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from snowcloud.resample import RESULT, ROWS_AT_ONCE, thread_scratch
from snowcloud.safe import SafeProduct
from snowcloud.scene import VALUE_RANGE, store_values

COVERAGE_CHECK_PIXELS = 512  # the coverage pre-check samples the tile on a grid of about this many pixels a side
DEM_MARGIN = 4  # DEM pixels read beyond a strip's footprint (cubic reaches 2)


class DemError(ValueError):
    """A DEM that cannot serve a scene (unreadable, no CRS, too little coverage, not in metres); names the file."""


class DemOnGrid(contextlib.AbstractContextManager):
    """A DEM of any CRS, reprojected strip by strip onto the scene's 10 m grid."""

    def __init__(self, path: str, product: SafeProduct, options: dict, threads: int) -> None:
        self.path, self.product, self.threads = str(path), product, threads
        self.lock = threading.Lock()  # one dataset handle, used by one thread at a time
        self.resampling = Resampling[options["dem_resampling"]]
        self.allowed_missing = options["dem_max_missing_fraction"]
        try:
            self.dataset = rasterio.open(self.path)
        except RasterioError as error:
            raise DemError(f"cannot read DEM {self.path}: {error}") from error
        if self.dataset.crs is None:
            self.dataset.close()
            raise DemError(f"DEM {self.path} has no coordinate reference system")

    def __exit__(self, *error: object) -> None:
        self.dataset.close()

    def check_coverage_estimate(self) -> None:
        """Refuse a DEM that leaves too much of the tile uncovered, measured on a coarse grid: before the
        heavy work (the strip pass counts exactly and checks again)."""
        missing = self.missing_fraction_estimate()
        if missing > self.allowed_missing:
            raise DemError(self.coverage_message(missing, estimate=True))

    def check_coverage(self, missing: float) -> None:
        if missing > self.allowed_missing:
            raise DemError(self.coverage_message(missing))

    def reproject(self, destination: np.ndarray, transform: Affine, resampling: Resampling | None = None) -> np.ndarray:
        """The DEM on the grid of float32 `destination` with this transform in the scene's CRS, NaN where it
        has no value."""
        destination.fill(np.nan)
        with self.lock:
            reproject(
                source=rasterio.band(self.dataset, 1),
                destination=destination,
                src_nodata=self.dataset.nodata,
                dst_transform=transform,
                dst_crs=self.product.crs,
                dst_nodata=np.nan,
                resampling=resampling or self.resampling,
                num_threads=self.threads,
            )
        return destination

    def fill(self, row: int, rows: int, out: np.ndarray) -> np.ndarray:
        """Rows [row, row + rows) of the scene grid into `out` (int16 metres, rounded, saturated; 0 where
        uncovered), ROWS_AT_ONCE rows at a time; returns where the DEM has a value."""
        covered = np.empty(out.shape, dtype=bool)
        for first in range(0, rows, ROWS_AT_ONCE):
            count = min(ROWS_AT_ONCE, rows - first)
            covered[first : first + count] = self._fill_rows(row + first, count, out[first : first + count])
        return covered

    def _fill_rows(self, row: int, rows: int, out: np.ndarray) -> np.ndarray:
        """`fill` for a few rows. The DEM pixels they reach are read first: when none of them is missing (the
        usual case), GDAL warps them without validity masks, which is 2-3x faster and gives the same values
        and coverage."""
        heights = thread_scratch().array(RESULT, (rows, self.product.width))
        heights.fill(np.nan)
        transform = self.product.transform @ Affine.translation(0, row)
        source, source_transform = self._pixels_reached(transform, self.product.width, rows)
        if source is not None:
            nodata = self.dataset.nodata
            complete = not np.isnan(source).any() and (nodata is None or not (source == nodata).any())
            masks = {"init_dest_nodata": False} if complete else {"src_nodata": nodata, "dst_nodata": np.nan}
            reproject(
                source=source,
                destination=heights,
                src_transform=source_transform,
                src_crs=self.dataset.crs,
                dst_transform=transform,
                dst_crs=self.product.crs,
                resampling=self.resampling,
                num_threads=self.threads,
                **masks,
            )
        covered = np.isnan(heights)
        np.logical_not(covered, out=covered)
        np.nan_to_num(heights, copy=False)
        self._check_heights(heights)
        store_values(heights, out)
        return covered

    def _check_heights(self, heights: np.ndarray) -> None:
        """Refuse heights the int16 ELEVATION band cannot hold (they would saturate unseen): not metres?"""
        low, high = float(heights.min()), float(heights.max())
        if low < VALUE_RANGE[0] or high > VALUE_RANGE[1]:
            raise DemError(
                f"DEM {self.path} has heights from {low:.0f} to {high:.0f} on tile {self.product.tile}, beyond the "
                f"ELEVATION band's range {VALUE_RANGE[0]}..{VALUE_RANGE[1]} m: give the DEM in metres (is it in centimetres?)"
            )

    def _pixels_reached(self, transform: Affine, width: int, height: int) -> tuple[np.ndarray | None, Affine]:
        """The DEM's values around the footprint of a grid (DEM_MARGIN pixels more on each side, for the
        kernels) and their transform; None where the footprint misses the DEM."""
        if not self.dataset.transform.is_rectilinear:
            window = Window(0, 0, self.dataset.width, self.dataset.height)
        else:
            (left, top), (right, bottom) = transform @ (0, 0), transform @ (width, height)
            bounds = transform_bounds(self.product.crs, self.dataset.crs, left, bottom, right, top, densify_pts=21)
            footprint = from_bounds(*bounds, transform=self.dataset.transform)
            first_col, first_row = (
                math.floor(footprint.col_off) - DEM_MARGIN,
                math.floor(footprint.row_off) - DEM_MARGIN,
            )
            last_col = math.ceil(footprint.col_off + footprint.width) + DEM_MARGIN
            last_row = math.ceil(footprint.row_off + footprint.height) + DEM_MARGIN
            first_col, first_row = max(first_col, 0), max(first_row, 0)
            last_col, last_row = min(last_col, self.dataset.width), min(last_row, self.dataset.height)
            if first_col >= last_col or first_row >= last_row:
                return None, transform
            window = Window(first_col, first_row, last_col - first_col, last_row - first_row)
        with self.lock:
            values = self.dataset.read(1, window=window)
        return values, self.dataset.transform @ Affine.translation(window.col_off, window.row_off)

    def missing_fraction_estimate(self) -> float:
        """Uncovered share of the tile on a coarse grid: fails a scene before the heavy work."""
        step = max(1, math.ceil(max(self.product.width, self.product.height) / COVERAGE_CHECK_PIXELS))
        shape = (math.ceil(self.product.height / step), math.ceil(self.product.width / step))
        coarse = self.reproject(
            np.empty(shape, dtype=np.float32), self.product.transform @ Affine.scale(step), Resampling.nearest
        )
        return float(np.isnan(coarse).mean())

    def coverage_message(self, missing: float, estimate: bool = False) -> str:
        about = "about " if estimate else ""
        return (
            f"DEM {self.path} covers {about}{_percent(1 - missing)} % of tile {self.product.tile} "
            f"({_percent(missing)} % missing; preprocess.dem_max_missing_fraction allows {_percent(self.allowed_missing)} %)"
        )


def _percent(fraction: float) -> str:
    value = 100 * fraction
    return f"{value:.1f}" if value == 0 or 0.1 <= value <= 99.9 else f"{value:.3g}"
