"""Label masks onto a scene's grid: a uint8 GeoTIFF (0..3, 255) or a thesis folder (mask.jp2 + mask_coverage.jp2).

A label may be on the scene's 10 m grid or on a coarser grid aligned with it (20 m, 30 m, 60 m ...): each scene
pixel takes the label pixel it lies in (nearest). Another CRS, a rotated, finer or misaligned grid is an error
naming the file. Scene pixels outside the label's extent are 255. A nodata value declared by the label file is
ignored (the thesis masks declare nodata=0, which is background).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from snowcloud.bands import CLASSES, IGNORE_INDEX
from snowcloud.counting import bincount_in_chunks

THESIS_MASK = "mask.jp2"
THESIS_COVERAGE = "mask_coverage.jp2"
THESIS_IGNORED_CLASS = 4  # semi-transparent clouds: annotated in the thesis, never trained on
LABEL_VALUES = (*range(len(CLASSES)), IGNORE_INDEX)
ALIGNMENT_TOLERANCE = 1e-3  # in scene pixels


class LabelError(ValueError):
    """A label mask that cannot be put on the scene's grid; the message names the file."""


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int


def scene_grid(scene_path: str | Path) -> Grid:
    with rasterio.open(scene_path) as src:
        return Grid(src.crs, src.transform, src.width, src.height)


def label_files(label_path: str | Path) -> list[Path]:
    """The files behind a label: the GeoTIFF itself, or a thesis folder's mask and coverage."""
    path = Path(label_path)
    if path.is_dir():
        files = [path / THESIS_MASK, path / THESIS_COVERAGE]
        missing = [file.name for file in files if not file.exists()]
        if missing:
            raise LabelError(
                f"{path}: a thesis label folder needs {THESIS_MASK} and {THESIS_COVERAGE}; missing {missing}"
            )
        return files
    if not path.exists():
        raise LabelError(f"{path}: label mask not found")
    return [path]


def read_label(label_path: str | Path, scene_path: str | Path, window: Window | None = None) -> np.ndarray:
    """The label (uint8 (H, W): 0..3, 255 not labelled) on the scene's grid, for `window` of the scene or all of it.

    Thesis folders: 255 where mask_coverage is 0, and class 4 (semi-transparent clouds) becomes 255.
    """
    grid = scene_grid(scene_path)
    window = window or Window(0, 0, grid.width, grid.height)
    files = label_files(label_path)
    label = read_on_grid(files[0], grid, window)
    if len(files) == 1:
        _check_values(label, LABEL_VALUES, files[0])
        return label
    coverage = read_on_grid(files[1], grid, window)
    covered = (coverage != 0) & (coverage != IGNORE_INDEX)
    _check_values(label[covered], (*range(len(CLASSES)), THESIS_IGNORED_CLASS), files[0])
    label[~covered | (label == THESIS_IGNORED_CLASS)] = IGNORE_INDEX
    return label


def _check_values(values: np.ndarray, allowed: tuple[int, ...], path: Path) -> None:
    present = np.flatnonzero(bincount_in_chunks(values, 256))
    unexpected = sorted(set(present.tolist()) - set(allowed))
    if unexpected:
        raise LabelError(f"{path}: unexpected label values {unexpected} (allowed: {list(allowed)})")


def read_on_grid(path: str | Path, grid: Grid, window: Window) -> np.ndarray:
    """Band 1 of a uint8 raster resampled (nearest) onto `window` of an aligned, equal or finer `grid`."""
    with rasterio.open(path) as src:
        if src.dtypes[0] != "uint8":
            raise LabelError(f"{path}: a label mask must be uint8, not {src.dtypes[0]}")
        (row_factor, row_offset), (col_factor, col_offset) = _alignment(src, grid, path)
        rows = _source_index(window.row_off, window.height, row_factor, row_offset)
        cols = _source_index(window.col_off, window.width, col_factor, col_offset)
        out = np.full((len(rows), len(cols)), IGNORE_INDEX, dtype=np.uint8)
        inside_rows = np.flatnonzero((rows >= 0) & (rows < src.height))
        inside_cols = np.flatnonzero((cols >= 0) & (cols < src.width))
        if inside_rows.size == 0 or inside_cols.size == 0:
            return out
        first_row, first_col = rows[inside_rows[0]], cols[inside_cols[0]]
        block = src.read(
            1,
            window=Window(
                first_col, first_row, cols[inside_cols[-1]] - first_col + 1, rows[inside_rows[-1]] - first_row + 1
            ),
        )
        out[np.ix_(inside_rows, inside_cols)] = block[
            np.ix_(rows[inside_rows] - first_row, cols[inside_cols] - first_col)
        ]
    return out


def _source_index(start: int, length: int, factor: int, offset: int) -> np.ndarray:
    """Label row (or column) holding each scene row (column) start..start+length-1."""
    return np.floor_divide(np.arange(int(start), int(start) + int(length)) - offset, factor)


def _alignment(src: rasterio.DatasetReader, grid: Grid, path: str | Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """((row factor, row offset), (col factor, col offset)) in scene pixels; errors for any other geometry."""
    if src.crs is None or src.crs != grid.crs:
        raise LabelError(f"{path}: label CRS {src.crs} differs from the scene's {grid.crs}")
    label, scene = src.transform, grid.transform
    if label.b or label.d or scene.b or scene.d:
        raise LabelError(f"{path}: rotated grids are not supported")
    axes = []
    for label_size, scene_size, label_origin, scene_origin, axis in (
        (label.e, scene.e, label.f, scene.f, "row"),
        (label.a, scene.a, label.c, scene.c, "column"),
    ):
        factor = label_size / scene_size
        offset = (label_origin - scene_origin) / scene_size
        if factor < 1 - ALIGNMENT_TOLERANCE or not math.isclose(factor, round(factor), abs_tol=ALIGNMENT_TOLERANCE):
            raise LabelError(
                f"{path}: label pixel size {abs(label_size)} is not a whole multiple of the scene's {abs(scene_size)} "
                f"along the {axis}s"
            )
        if not math.isclose(offset, round(offset), abs_tol=ALIGNMENT_TOLERANCE):
            raise LabelError(
                f"{path}: label grid is not aligned with the scene grid (shifted by {offset:.3f} scene pixels "
                f"along the {axis}s)"
            )
        axes.append((round(factor), round(offset)))
    return axes[0], axes[1]
