"""Quicklook of a prediction: the scene in false colour beside the class mask, as a PNG for the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from snowcloud.atomic import atomic_output
from snowcloud.labels import class_colours
from snowcloud.mask import class_colour_table, read_classes
from snowcloud.scene import band_indexes, check_same_grid, valid_pixels

# False colour SWIR / NIR / red (the thesis's FCI family): snow cyan, cloud white, vegetation green.
QUICKLOOK_BANDS = ("B11", "B08", "B04")
QUICKLOOK_REFLECTANCE_MAX = 0.5  # reflectance shown at full brightness
QUICKLOOK_PANEL_PX = 480  # longest side of each panel read from the rasters
QUICKLOOK_FIGURE_WIDTH = 9.6  # inches at 100 dpi: the PNG is under 1000 px wide
QUICKLOOK_NODATA_COLOUR = "0.3"  # grey behind transparent no-data pixels


def decimated_shape(shape: tuple[int, int], longest: int) -> tuple[int, int]:
    """(rows, cols) of a read whose longest side is at most `longest`, keeping the aspect ratio."""
    step = max(1, -(-max(shape) // longest))
    return -(-shape[0] // step), -(-shape[1] // step)


def false_colour(dataset: rasterio.DatasetReader, out_shape: tuple[int, int]) -> np.ndarray:
    """Decimated SWIR/NIR/red RGBA float image of a scene; no-data pixels transparent."""
    indexes = band_indexes(dataset, QUICKLOOK_BANDS, "the quicklook")
    values = dataset.read(indexes, out_shape=(len(indexes), *out_shape), resampling=rasterio.enums.Resampling.nearest)
    valid = valid_pixels(values, dataset.nodata)
    rgb = np.clip(values.astype(np.float32) / 10000.0 / QUICKLOOK_REFLECTANCE_MAX, 0.0, 1.0)
    return np.dstack([*rgb, valid.astype(np.float32)])


def class_colours_rgba(classes: np.ndarray, class_names: list[str] | tuple[str, ...]) -> np.ndarray:
    """RGBA float image of a class mask of classes `class_names` in their colours (no data transparent)."""
    table = np.zeros((256, 4), np.float32)
    for value, rgba in class_colour_table(class_names).items():
        table[value] = np.asarray(rgba, np.float32) / 255.0
    return table[classes]


def quicklook(scene: str, prediction: str, output: str) -> None:
    """PNG of the scene in false colour beside the predicted mask in class colours, with a legend."""
    with rasterio.open(scene) as scene_ds, rasterio.open(prediction) as prediction_ds:
        check_same_grid(prediction_ds, scene_ds)
        out_shape = decimated_shape(scene_ds.shape, QUICKLOOK_PANEL_PX)
        image = false_colour(scene_ds, out_shape)
        classes = prediction_ds.read(1, out_shape=out_shape, resampling=rasterio.enums.Resampling.nearest)
        tags = prediction_ds.tags()
    class_names = read_classes(tags, prediction)
    panel_height = QUICKLOOK_FIGURE_WIDTH / 2 * out_shape[0] / out_shape[1]
    figure = Figure(
        figsize=(QUICKLOOK_FIGURE_WIDTH, min(panel_height, QUICKLOOK_FIGURE_WIDTH) + 1.2), dpi=100, layout="constrained"
    )
    left, right = figure.subplots(1, 2)
    left.imshow(image, interpolation="nearest")
    left.set_title(f"{Path(scene).parent.name} {Path(scene).stem}: {' / '.join(QUICKLOOK_BANDS)}", fontsize=9)
    right.imshow(class_colours_rgba(classes, class_names), interpolation="nearest")
    right.set_title(" ".join(["prediction", tags.get("experiment", "")]), fontsize=9)
    for axes in (left, right):
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_facecolor(QUICKLOOK_NODATA_COLOUR)
    colours = class_colours(class_names)
    handles = [
        Patch(facecolor=np.asarray(colours[i]) / 255, edgecolor="black", label=name)
        for i, name in enumerate(class_names)
    ]
    handles.append(Patch(facecolor=QUICKLOOK_NODATA_COLOUR, edgecolor="black", label="no data"))
    figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    with atomic_output(output) as tmp:
        figure.savefig(tmp, format="png")
