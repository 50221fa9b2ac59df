"""Label masks and the class set: a uint8 GeoTIFF or a thesis folder (mask.jp2 + mask_coverage.jp2) onto a
scene's grid, and the classes their values stand for.

The class set (a dataset's `classes` and `ignored_classes`, :class:`ClassSet`) names the classes a model learns,
in the order of its outputs, and the label values each class takes; ignored classes are encoded in the labels,
counted in the class distribution and not trained on (read as 255). 255 is always "not labelled"; any other
value is an error naming the file. The default is the thesis encoding: 0 background, 1 snow, 2 cloud, 3 water
trained, 4 semi-transparent ("thin") clouds ignored.

A label may be on the scene's 10 m grid or on a coarser grid aligned with it (20 m, 30 m, 60 m ...): each scene
pixel takes the label pixel it lies in (nearest). Another CRS, a rotated, finer or misaligned grid is an error
naming the file. Scene pixels outside the label's extent are 255. A nodata value declared by the label file is
ignored (the thesis masks declare nodata=0, which is background).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from snowcloud.counting import bincount_in_chunks

THESIS_MASK = "mask.jp2"
THESIS_COVERAGE = "mask_coverage.jp2"
ALIGNMENT_TOLERANCE = 1e-3  # in scene pixels

# 255 marks pixels that are not labelled (ignored in training and metrics) or have no data.
IGNORE_INDEX = 255
# The default class set (schema defaults of datasets.*.classes and ignored_classes): the thesis encoding.
DEFAULT_CLASSES: dict[str, list[int]] = {"background": [0], "snow": [1], "cloud": [2], "water": [3]}
DEFAULT_IGNORED_CLASSES: dict[str, list[int]] = {"thin_cloud": [4]}
CLASSES: tuple[str, ...] = tuple(DEFAULT_CLASSES)  # what the baselines produce

# Colours (RGB) of the classes by name in prediction colour tables and plots; other names cycle OTHER_COLOURS.
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "background": (60, 120, 40),
    "snow": (240, 250, 255),
    "cloud": (160, 160, 175),
    "water": (30, 90, 200),
    "thin_cloud": (215, 180, 230),
}
OTHER_COLOURS = ((230, 120, 30), (200, 40, 40), (120, 60, 160), (240, 210, 40))
NO_DATA_COLOUR = (0, 0, 0)


def class_colours(names: tuple[str, ...] | list[str]) -> dict[int, tuple[int, int, int]]:
    """RGB per mask value of classes `names` (in mask order), and black for IGNORE_INDEX."""
    others = iter(OTHER_COLOURS * (len(names) // len(OTHER_COLOURS) + 1))
    colours = {i: NAMED_COLOURS.get(name) or next(others) for i, name in enumerate(names)}
    return colours | {IGNORE_INDEX: NO_DATA_COLOUR}


CLASS_COLOURS = class_colours(CLASSES)


class ClassSetError(ValueError):
    """A class set that cannot be used; the message names the config key or file."""


@dataclass(frozen=True)
class ClassSet:
    """Trained classes (model outputs, in order) and ignored classes, each with the label values it takes."""

    classes: tuple[tuple[str, tuple[int, ...]], ...]
    ignored: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @classmethod
    def from_options(cls, options: dict | None, key: str = "datasets.*") -> ClassSet:
        """The class set of a dataset's options (`classes`, `ignored_classes`; defaults where absent)."""
        options = options or {}
        trained = options.get("classes") or DEFAULT_CLASSES
        ignored = options.get("ignored_classes", DEFAULT_IGNORED_CLASSES) or {}
        result = cls(
            tuple((name, tuple(int(v) for v in values)) for name, values in trained.items()),
            tuple((name, tuple(int(v) for v in values)) for name, values in ignored.items()),
        )
        result.check(key)
        return result

    def check(self, key: str) -> None:
        """ClassSetError naming `key` for a name or value used twice, or a value outside 0..254."""
        names = [name for name, _ in self.classes + self.ignored]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ClassSetError(f"{key}.classes / ignored_classes: class names {twice} are used twice")
        owner: dict[int, str] = {}
        for name, values in self.classes + self.ignored:
            for value in values:
                if not 0 <= value < IGNORE_INDEX:
                    raise ClassSetError(f"{key}: class {name} takes label value {value}; values are 0..254")
                if value in owner:
                    raise ClassSetError(
                        f"{key}: label value {value} belongs to both {owner[value]} and {name}; give it to one"
                    )
                owner[value] = name
        if not self.classes:
            raise ClassSetError(f"{key}.classes: at least one class to train is needed")

    def options(self) -> dict[str, dict[str, list[int]]]:
        """As in the configuration (and the shard's `class_set` attribute)."""
        return {
            "classes": {name: list(values) for name, values in self.classes},
            "ignored_classes": {name: list(values) for name, values in self.ignored},
        }

    @property
    def names(self) -> tuple[str, ...]:
        """The trained classes: the model's outputs and the values 0..K-1 of masks and shard labels."""
        return tuple(name for name, _ in self.classes)

    @property
    def encoded_names(self) -> tuple[str, ...]:
        """Trained then ignored classes: the indices of :func:`read_encoded` and of the shard's class counts."""
        return tuple(name for name, _ in self.classes + self.ignored)

    def values(self) -> tuple[int, ...]:
        return tuple(value for _, values in self.classes + self.ignored for value in values)

    def lookup(self) -> np.ndarray:
        """uint8 (256,): label value -> encoded index; 255 (not labelled) for 255 and values of no class."""
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for index, (_, values) in enumerate(self.classes + self.ignored):
            table[list(values)] = index
        return table

    def trained(self, encoded: np.ndarray) -> np.ndarray:
        """Encoded indices -> trained indices, the ignored classes becoming 255 (in place)."""
        encoded[(encoded >= len(self.classes)) & (encoded != IGNORE_INDEX)] = IGNORE_INDEX
        return encoded


DEFAULT_CLASS_SET = ClassSet.from_options(None)


def recorded_classes(record: Mapping[str, Any], source: str) -> list[str]:
    """The class names a file records under `classes` (checkpoint metadata, stats.json, a mask's tags, where
    they are JSON text), in the order of the model's outputs. The one reader of files from before class sets
    were configurable: those that record no `class_set` either hold the thesis's classes (CLASSES); a file that
    records a class set but no class names is an error naming `source`."""
    names = record.get("classes")
    if names is None:
        if "class_set" in record:
            raise ClassSetError(f"{source} records a class set but no class names ('classes'): rewrite it")
        return list(CLASSES)
    return list(json.loads(names) if isinstance(names, str) else names)


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


def read_label(
    label_path: str | Path, scene_path: str | Path, window: Window | None = None, *, class_set: ClassSet
) -> np.ndarray:
    """The label as trained classes (uint8 (H, W): 0..K-1, 255 not labelled or an ignored class) on the
    scene's grid, for `window` of the scene or all of it."""
    return class_set.trained(read_encoded(label_path, scene_path, window, class_set=class_set))


def read_encoded(
    label_path: str | Path, scene_path: str | Path, window: Window | None = None, *, class_set: ClassSet
) -> np.ndarray:
    """The label as encoded classes of `class_set` (uint8 (H, W): trained then ignored classes, 255 not
    labelled). Thesis folders: 255 where mask_coverage is 0; within it every value must belong to a class."""
    grid = scene_grid(scene_path)
    window = window or Window(0, 0, grid.width, grid.height)
    files = label_files(label_path)
    label = read_on_grid(files[0], grid, window)
    if len(files) == 1:
        _check_values(label, (*class_set.values(), IGNORE_INDEX), files[0])
        return class_set.lookup()[label]
    coverage = read_on_grid(files[1], grid, window)
    covered = (coverage != 0) & (coverage != IGNORE_INDEX)
    _check_values(label[covered], class_set.values(), files[0])
    encoded = class_set.lookup()[label]
    encoded[~covered] = IGNORE_INDEX
    return encoded


def _check_values(values: np.ndarray, allowed: tuple[int, ...], path: Path) -> None:
    present = np.flatnonzero(bincount_in_chunks(values, 256))
    unexpected = sorted(set(present.tolist()) - set(allowed))
    if unexpected:
        raise LabelError(
            f"{path}: unexpected label values {unexpected} (allowed: {sorted(allowed)}; see the dataset's "
            "classes and ignored_classes)"
        )


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
