"""The prediction mask `results/predictions/{experiment}/{tile}/{date}.tif`: its writing, colour table, class tags
and the optional probabilities `{date}_proba.tif` beside it; `read_classes` gives the class names of a mask.

A mask is a uint8 COG: 0..K-1 the model's classes in the order of its outputs, IGNORE_INDEX (255) no data; a
colour table (classes by name, no data transparent); the class names in the tags `classes` (a JSON list) and
`CLASS_i`; the pixels of each class and without data, counted as the rows are written, in the tags
`class_pixel_counts` (a JSON list in class order) and `nodata_pixel_count` (what the season table and the STAC
items read instead of the pixels: `read_class_counts`); overviews by mode. The probabilities are K uint8 bands,
255 x probability, 0 and masked where the scene has no data.

torch is imported by the functions that compute on a device (what inference hands over), not with the module:
reading a mask's classes and counts (evaluation, the season table, STAC) then costs no torch import, 1.8 s of
CPU per workflow job.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from snowcloud.atomic import atomic_output, scratch_folder
from snowcloud.gdal import gdal_errors_raised
from snowcloud.labels import IGNORE_INDEX, class_colours, recorded_classes

if TYPE_CHECKING:
    import torch

CLASSES_TAG = "classes"  # JSON list of the class names, in mask order
CLASS_COUNTS_TAG = "class_pixel_counts"  # JSON list: pixels of each class, in the order of CLASSES_TAG
NODATA_COUNT_TAG = "nodata_pixel_count"  # pixels without data (IGNORE_INDEX)


class MaskError(ValueError):
    """A mask that lacks what is asked of it; the message names the file and what to do."""


@dataclass
class RowBlock:
    """Finished rows of a scene: blended class probabilities (K, rows, W) float32 (a tensor on the device that
    computed them, or an array) and the valid mask (rows, W)."""

    row: int
    probabilities: torch.Tensor | np.ndarray
    valid: np.ndarray


@dataclass
class MaskRows:
    """Finished rows in the mask's format, on the device that computed them: the classes (rows, W) uint8, the
    bincount (256,) of their values, the probabilities as bytes (K, rows, W) (None unless they are written),
    and the valid mask (rows, W) on the host."""

    row: int
    classes: torch.Tensor
    counts: torch.Tensor
    probability_bytes: torch.Tensor | None
    valid: np.ndarray


def class_colour_table(names: tuple[str, ...] | list[str]) -> dict[int, tuple[int, int, int, int]]:
    """Colour table of a class mask: class colours opaque, no data transparent."""
    return {value: (*rgb, 0 if value == IGNORE_INDEX else 255) for value, rgb in class_colours(names).items()}


def class_tags(class_names: list[str]) -> dict[str, str]:
    """The tags that name a mask's classes: `CLASS_i` and `classes`."""
    return {f"CLASS_{i}": name for i, name in enumerate(class_names)} | {CLASSES_TAG: json.dumps(class_names)}


def read_classes(tags: dict[str, str], source: str) -> list[str]:
    """The class names of the mask `source` from its tags (labels.recorded_classes)."""
    return recorded_classes(tags, source)


@dataclass(frozen=True)
class ClassCounts:
    """The pixels of each class of a mask, and its pixels without data."""

    classes: list[str]
    counts: list[int]
    nodata: int

    @property
    def valid(self) -> int:
        return sum(self.counts)

    @property
    def pixels(self) -> int:
        return self.valid + self.nodata


def count_tags(counts: np.ndarray, class_names: list[str]) -> dict[str, str]:
    """The count tags of a mask from the bincount (256,) of its values."""
    per_class = [int(count) for count in counts[: len(class_names)]]
    return {CLASS_COUNTS_TAG: json.dumps(per_class), NODATA_COUNT_TAG: str(int(counts[IGNORE_INDEX]))}


def class_counts(tags: dict[str, str], path: str | Path) -> ClassCounts:
    """The class counts in a mask's tags (`path`: the mask, for the error)."""
    if CLASS_COUNTS_TAG not in tags or CLASSES_TAG not in tags:
        raise MaskError(
            f"mask {path} records no class counts (it was written before masks recorded them): rerun its inference"
        )
    return ClassCounts(json.loads(tags[CLASSES_TAG]), json.loads(tags[CLASS_COUNTS_TAG]), int(tags[NODATA_COUNT_TAG]))


def read_class_counts(path: str | Path) -> ClassCounts:
    """The class counts a mask recorded when it was written (its tags only: the pixels are not read)."""
    with rasterio.open(path) as dataset:
        return class_counts(dataset.tags(), path)


def mask_identity(path: str | Path) -> tuple[str, str]:
    """(tile, date) of a mask at .../{tile}/{date}.tif (the workflow's and the predict command's layout)."""
    path = Path(path)
    return path.parent.name, path.stem


def probabilities_path(output: str | Path) -> Path:
    """The optional probability COG beside a prediction: {date}_proba.tif."""
    output = Path(output)
    return output.with_name(f"{output.stem}_proba{output.suffix}")


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """uint8 index of the largest of (K, ...) values along the first axis, the first one where several are (as
    numpy's argmax; torch's own over the first axis is several times slower on a CPU)."""
    import torch

    best = values[0].clone()
    index = torch.zeros(values.shape[1:], dtype=torch.uint8, device=values.device)
    for k in range(1, len(values)):
        index.masked_fill_(values[k] > best, k)
        torch.maximum(best, values[k], out=best)
    return index


def valid_on(device: torch.device, valid: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A valid mask on `device`; to a GPU through pinned memory, so that the copy does not wait for the work
    queued there (a copy from pageable memory does)."""
    import torch

    valid = torch.as_tensor(valid)
    if device.type == "cuda" and valid.device.type == "cpu":
        return valid.pin_memory().to(device, non_blocking=True)
    return valid.to(device)


def classes_from_probabilities(
    probabilities: torch.Tensor, valid: torch.Tensor, threshold: float | None
) -> torch.Tensor:
    """Argmax class per pixel of (K, rows, W) probabilities as uint8 on their device, IGNORE_INDEX where `valid`
    (on the same device) is False. With a `threshold` (the thesis's thresholded prediction) the argmax is over
    `probability > threshold`: the first class above it, background (0) where none is."""
    import torch

    if threshold is not None:
        probabilities = (probabilities > threshold).to(torch.uint8)
    return first_argmax(probabilities).masked_fill_(~valid, IGNORE_INDEX)


def probabilities_as_bytes(probabilities: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Probabilities scaled to 0..255 uint8 on their device (0 where `valid` is False; the file's mask marks those
    pixels): round(255 x probability clipped to 0..1), halves to even."""
    import torch

    scaled = probabilities.clamp(0.0, 1.0).mul_(255).round_().to(torch.uint8)
    return scaled.masked_fill_(~valid, 0)


def mask_rows(block: RowBlock, threshold: float | None, probabilities: bool) -> MaskRows:
    """A block of blended rows in the mask's format (on its device: only bytes go to the host)."""
    import torch

    values = torch.as_tensor(block.probabilities)
    valid = valid_on(values.device, block.valid)  # once, for the classes and the bytes
    classes = classes_from_probabilities(values, valid, threshold)
    counts = torch.bincount(classes.flatten(), minlength=256)
    scaled = probabilities_as_bytes(values, valid) if probabilities else None
    return MaskRows(block.row, classes, counts, scaled, np.asarray(block.valid))


def write_cog(source: Path, output: str | Path, resampling: str) -> None:
    """Copy a finished GeoTIFF to `output` as a tiled, compressed COG with overviews, atomically.

    GDAL's COG driver, not the streaming `cog.CogWriter` of the scene rasters: a mask's overviews are the most
    frequent class (MODE), which CogWriter's 2 x 2 means cannot give, and the driver only copies a complete
    dataset, so this is an extra pass: 2.5 s of CPU for a full tile's mask, 1.7 s of it the MODE overviews, and
    4.4 s for its probabilities (`benchmarks/bench_mask_cog.py`, load 6 on 2 cores; docs/inference.md)."""
    with atomic_output(output) as tmp:
        rasterio.shutil.copy(
            source,
            tmp,
            driver="COG",
            compress="ZSTD",
            blocksize=512,
            overview_resampling=resampling,
            bigtiff="IF_SAFER",
        )


def write_prediction(
    blocks: Iterator[RowBlock],
    profile: dict,
    output: str | Path,
    class_names: list[str],
    tags: dict[str, str],
    probabilities: bool,
    threshold: float | None = None,
) -> None:
    """Stream row blocks into plain GeoTIFFs in a scratch folder beside `output`, counting the pixels of each
    class into the mask's tags (`count_tags`), then copy them to COGs (probabilities first, so the mask, the
    Snakemake output, appears last). Each block is turned into classes, counts and bytes here, on its device,
    before the next is asked for; a writer thread moves them to the host and writes them while the network
    runs on."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    base = {
        "driver": "GTiff",
        "width": profile["width"],
        "height": profile["height"],
        "crs": profile["crs"],
        "transform": profile["transform"],
        "dtype": "uint8",
        "tiled": False,
        "bigtiff": "IF_SAFER",
    }
    names = class_tags(class_names)
    layers = 1 + (len(class_names) + 1 if probabilities else 0)  # bytes per pixel: classes, probabilities, mask
    needs_bytes = 2 * layers * profile["width"] * profile["height"]  # the plain GeoTIFFs and their COGs
    counts = np.zeros(256, np.int64)
    with scratch_folder(output, needs_bytes=needs_bytes) as scratch:
        mask_path, proba_path = Path(scratch) / "mask.tif", Path(scratch) / "proba.tif"
        with contextlib.ExitStack() as stack:
            stack.enter_context(gdal_errors_raised(f"{output} (its scratch rasters)"))  # checked once they are closed
            mask = stack.enter_context(rasterio.open(mask_path, "w", **base, count=1, nodata=IGNORE_INDEX))
            mask.write_colormap(1, class_colour_table(class_names))
            mask.set_band_description(1, "class")
            mask.update_tags(**tags, **names)
            proba = None
            if probabilities:
                proba = stack.enter_context(rasterio.open(proba_path, "w", **base, count=len(class_names)))
                for i, name in enumerate(class_names, start=1):
                    proba.set_band_description(i, f"p_{name}")
                proba.update_tags(**tags, **names, scale="probability = value / 255")

            def write(rows: MaskRows) -> None:
                window = Window(0, rows.row, profile["width"], rows.valid.shape[0])
                mask.write(rows.classes.cpu().numpy(), 1, window=window)
                counts[:] += rows.counts.cpu().numpy()
                if proba is not None:
                    proba.write(rows.probability_bytes.cpu().numpy(), window=window)
                    proba.write_mask(np.where(rows.valid, 255, 0).astype(np.uint8), window=window)

            with ThreadPoolExecutor(max_workers=1) as writer:  # writes while the network runs the next rows
                pending = None
                for block in blocks:
                    rows = mask_rows(block, threshold, probabilities)
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(write, rows)
                if pending is not None:
                    pending.result()
            mask.update_tags(**count_tags(counts, class_names))
        if probabilities:
            write_cog(proba_path, probabilities_path(output), "AVERAGE")
        write_cog(mask_path, output, "MODE")
