"""Full-scene prediction: large windows whose margins are discarded (the default) or patch-size windows blended
with weights normalised by their sum, flip TTA, reading and writing overlapped with the network, bounded memory;
the class mask (and optionally the probabilities) as COGs."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window
from tqdm import tqdm

import snowcloud
from snowcloud import checkpoint, normalisation
from snowcloud.accelerator import autocast_dtype, precision_name, resolve_device
from snowcloud.atomic import atomic_output, scratch_folder
from snowcloud.config import validated
from snowcloud.gdal import gdal_env, gdal_errors_raised
from snowcloud.labels import CLASSES, IGNORE_INDEX, class_colour_table
from snowcloud.provenance import file_sha256
from snowcloud.quicklook import quicklook
from snowcloud.scene import band_indexes, valid_pixels

log = logging.getLogger(__name__)

# Flip TTA: identity, flip W, flip H, flip H and W (dims of a (B, C, H, W) tensor); each is its own inverse.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

# A normaliser maps a (C, H, W) float32 window of scene values, its (H, W) valid mask and a name for error
# messages to the model input (C, H, W) float32, 0 at invalid pixels.
Normaliser = Callable[[np.ndarray, np.ndarray, str], np.ndarray]

# GDAL block cache while predicting (GDAL's default is 5 % of the RAM): about three rows of 512 x 512 tiles of a
# 14-band 10980-wide scene (161 MB each), so overlapping windows seldom decode a tile twice.
GDAL_CACHE_MB = 512
# The U-Net halves the grid four times: window sides that are multiples of 16 keep every level aligned, so a
# window's result does not depend on padding inside the network.
WINDOW_MULTIPLE = 16
PREFETCH_BATCHES = 2  # batches read and normalised ahead of the network


class InferenceError(ValueError):
    """A model and a scene that cannot be run together; the message names both files."""


# ----------------------------------------------------------------------------------------------- windows


def window_stride(patch_size: int, overlap: float) -> int:
    """Stride between window starts: P * (1 - overlap), at least one pixel."""
    return max(1, round(patch_size * (1 - overlap)))


def window_starts(length: int, patch_size: int, stride: int) -> list[int]:
    """Window start offsets covering every pixel of 0..length-1.

    The last window is shifted back inside so that it ends on the border (the thesis stopped short and left
    strips unpredicted); an axis shorter than the patch gets one window at 0, padded for the model.
    """
    if length <= patch_size:
        return [0]
    starts = list(range(0, length - patch_size + 1, stride))
    if starts[-1] != length - patch_size:
        starts.append(length - patch_size)
    return starts


def blending_profile(size: int, shape: str = "sine") -> np.ndarray:
    """1-D blending weights sampled at pixel centres, 1 in the centre and > 0 up to the edges (so every covered
    pixel has a positive summed weight): `sine` sin(pi (i + 0.5) / P), or `tent` 1 - |2 (i + 0.5) / P - 1| (the
    thesis's "gaussian_smoother", which was 0 on the edge pixels themselves)."""
    u = (np.arange(size) + 0.5) / size
    profile = np.sin(np.pi * u) if shape == "sine" else 1 - np.abs(2 * u - 1)
    return profile.astype(np.float32)


def blending_weights(patch_size: int, shape: str = "sine") -> np.ndarray:
    """Separable 2-D blending weights of a P x P window (outer product of `blending_profile`)."""
    profile = blending_profile(patch_size, shape)
    return np.outer(profile, profile)


@dataclass(frozen=True)
class AxisPlan:
    """The windows along one axis: their starts, their common size (the network's input side; larger than the
    axis only for an axis shorter than one window, padded) and each window's 1-D weights over its size."""

    starts: list[int]
    size: int
    weights: list[np.ndarray]

    def work(self, length: int) -> float:
        """Pixels the network computes along this axis per pixel of the axis."""
        return len(self.starts) * self.size / length


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def blend_axis(length: int, patch_size: int, overlap: float, shape: str) -> AxisPlan:
    """Windows of the model's patch size at `overlap`, each weighted by the blending profile."""
    starts = window_starts(length, patch_size, window_stride(patch_size, overlap))
    return AxisPlan(starts, patch_size, [blending_profile(patch_size, shape)] * len(starts))


def margin_axis(length: int, window: int, margin: int) -> AxisPlan:
    """As few windows of at most `window` pixels as cover the axis when each keeps only its core, the part at
    least `margin` pixels from its edges (at the scene's borders the window's own edge counts, nothing is
    lost); cores split the axis evenly, the window size is the largest core plus both margins rounded up to a
    multiple of WINDOW_MULTIPLE (an axis that fits into one window is one window of its own length). Each
    window's weights are 1 on its core and 0 elsewhere: every pixel is taken from exactly one window, away from
    that window's zero-padded edges."""
    count = max(1, -(-length // max(1, window - 2 * margin)))
    size = round_up(-(-length // count) + 2 * margin, WINDOW_MULTIPLE)
    if size >= length:  # one window of exactly the axis: zeros fed beyond the scene would change its border
        return AxisPlan([0], length, [np.ones(length, np.float32)])
    bounds = [i * length // count for i in range(count + 1)]
    starts, weights = [], []
    for first, last in zip(bounds, bounds[1:]):
        start = min(max(first - margin, 0), length - size)
        core = np.zeros(size, np.float32)
        core[first - start : last - start] = 1.0
        starts.append(start)
        weights.append(core)
    return AxisPlan(starts, size, weights)


def window_count(height: int, width: int, patch_size: int, options: dict) -> int:
    """Windows that cover a height x width scene under the scheme of `options` (before skipping those without a
    valid pixel)."""
    rows, cols = axis_plans(height, width, patch_size, options)
    return len(rows.starts) * len(cols.starts)


def axis_plans(height: int, width: int, patch_size: int, options: dict) -> tuple[AxisPlan, AxisPlan]:
    """Row and column windows of the scheme in `options` (`scheme`: margin or blend)."""
    if options["scheme"] == "margin":
        return (margin_axis(height, options["window"], options["margin"]),
                margin_axis(width, options["window"], options["margin"]))  # fmt: skip
    return (blend_axis(height, patch_size, options["overlap"], options["blending"]),
            blend_axis(width, patch_size, options["overlap"], options["blending"]))  # fmt: skip


def scheme_description(options: dict) -> dict:
    """The window scheme's settings (for logs and provenance tags)."""
    if options["scheme"] == "margin":
        return {"scheme": "margin", "window": options["window"], "margin": options["margin"]}
    return {"scheme": "blend", "overlap": options["overlap"], "blending": f"{options['blending']}, normalised"}


# ----------------------------------------------------------------------------------------------- model runs


@dataclass(frozen=True)
class RunSettings:
    """How windows go through the model: device, batch size, flips, precision, and the CPU threads that read
    the scene (and run the network on a CPU)."""

    device: torch.device
    batch_size: int
    tta: bool
    amp_dtype: torch.dtype | None  # None: float32
    threads: int = 1

    @property
    def precision(self) -> str:
        return precision_name(self.amp_dtype)


def run_settings(options: dict, threads: int = 1) -> RunSettings:
    """Resolve `options` (device, amp, batch_size, tta) for this machine; on a CPU use `threads` threads."""
    try:
        device = resolve_device(options.get("device", "auto"), "inference.device")
    except RuntimeError as error:
        raise InferenceError(str(error)) from None
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    return RunSettings(
        device=device, batch_size=int(options["batch_size"]), tta=bool(options["tta"]),
        amp_dtype=autocast_dtype(options.get("amp", True), device), threads=max(1, threads),
    )  # fmt: skip


def prepare_model(model: torch.nn.Module, settings: RunSettings) -> torch.nn.Module:
    """The model in eval mode on the device, channels-last on a GPU."""
    model = model.to(settings.device).eval()
    if settings.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def window_probabilities(model: torch.nn.Module, windows: torch.Tensor, settings: RunSettings) -> torch.Tensor:
    """Softmax (B, K, h, w) float32 of a batch of (B, C, h, w) windows, averaged over the flips when TTA is on
    (each flipped output is flipped back before averaging)."""
    batch = windows.to(settings.device, non_blocking=True)
    if settings.device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)
    flips = FLIPS if settings.tta else FLIPS[:1]
    total = None
    with torch.inference_mode():
        for dims in flips:
            flipped = batch.flip(dims) if dims else batch
            with torch.autocast(
                settings.device.type, dtype=settings.amp_dtype or torch.float32, enabled=settings.amp_dtype is not None
            ):
                logits = model(flipped)
            probabilities = torch.softmax(logits.float(), dim=1)
            probabilities = probabilities.flip(dims) if dims else probabilities
            total = probabilities if total is None else total + probabilities
    return total / len(flips)


# ----------------------------------------------------------------------------------------------- scene reading


@dataclass
class Batch:
    """Windows of one window row, read and normalised (B, C, h, w), padded to the plan's window size (pinned
    memory on CUDA) and their column indexes; on the row's last batch also the validity of the row's scene rows
    (h, W) (`windows` is None when no window is left to run)."""

    row_index: int
    col_indexes: list[int]
    windows: torch.Tensor | None
    valid: np.ndarray | None = None


def read_window(
    dataset: rasterio.DatasetReader, indexes: list[int], window: Window, normalise: Normaliser
) -> tuple[np.ndarray, np.ndarray]:
    """The given bands in a window, normalised, and where all of them hold data."""
    raw = dataset.read(indexes, window=window)
    valid = valid_pixels(raw, dataset.nodata)
    source = f"{dataset.name} rows {window.row_off}..{window.row_off + window.height} columns {window.col_off}.."
    return normalise(raw.astype(np.float32), valid, source + f"{window.col_off + window.width}"), valid


def read_ahead(
    path: str, indexes: list[int], normalise: Normaliser, windows: list[Window], readers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """read_window over `windows`, in their order, on `readers` threads (GDAL's decoding and numpy's arithmetic
    run outside the GIL), at most 2 x `readers` windows ahead. Each thread reads through its own handle on the
    raster: a rasterio dataset must not be shared between threads."""
    local, handles, opening = threading.local(), [], threading.Lock()

    def read(window: Window) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(local, "dataset"):
            local.dataset = rasterio.open(path)
            with opening:
                handles.append(local.dataset)
        return read_window(local.dataset, indexes, window, normalise)

    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="snowcloud-read")
    try:
        for window in windows:
            pending.append(pool.submit(read, window))
            if len(pending) >= 2 * readers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # closed early (an error downstream): drop the reads not started, wait for the running ones
        pool.shutdown(cancel_futures=True)
        for handle in handles:
            handle.close()


def plan_windows(plans: tuple[AxisPlan, AxisPlan], height: int, width: int) -> list[Window]:
    """The windows of `plans` over a `height` x `width` scene, row by row (cut to the scene where it is smaller
    than a window)."""
    rows, cols = plans
    size = (min(cols.size, width), min(rows.size, height))
    return [Window(col, row, *size) for row in rows.starts for col in cols.starts]


def window_batches(
    dataset: rasterio.DatasetReader,
    indexes: list[int],
    normalise: Normaliser,
    plans: tuple[AxisPlan, AxisPlan],
    per_batch: int,
    pin: bool,
    readers: int = 1,
) -> Iterator[Batch]:
    """Read and normalise the windows row by row (on `readers` threads), in batches of `per_batch`; windows
    without a valid pixel are left out (a tile at the edge of the swath is often half empty)."""
    rows, cols = plans
    height, width = min(rows.size, dataset.height), min(cols.size, dataset.width)
    read = read_ahead(dataset.name, indexes, normalise, plan_windows(plans, dataset.height, dataset.width), readers)

    def batch(i: int, chosen: list[int], images: list[np.ndarray], valid: np.ndarray | None = None) -> Batch:
        windows = torch.from_numpy(np.stack(images)) if images else None
        return Batch(i, chosen, windows.pin_memory() if pin and windows is not None else windows, valid)

    with contextlib.closing(read):
        for i in range(len(rows.starts)):
            valid_rows = np.zeros((height, dataset.width), bool)
            chosen, images = [], []
            for j, col in enumerate(cols.starts):
                image, valid = next(read)
                valid_rows[:, col : col + width] = valid
                if valid.any():
                    chosen.append(j)
                    images.append(pad_to_window(image, rows.size, cols.size))
                if len(images) == per_batch:
                    yield batch(i, chosen, images)
                    chosen, images = [], []
            yield batch(i, chosen, images, valid_rows)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(items: Iterator, depth: int) -> Iterator:
    """The items of an iterator, produced in a background thread up to `depth` items ahead (so reading and
    normalising overlap the network); an exception there is raised here; stopping early stops the thread."""
    queue: Queue = Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failure(error))

    thread = threading.Thread(target=produce, name="snowcloud-reader", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


# ----------------------------------------------------------------------------------------------- blending


@dataclass
class RowBlock:
    """Finished rows of a scene: blended class probabilities (K, rows, W) and the valid mask (rows, W)."""

    row: int
    probabilities: np.ndarray
    valid: np.ndarray


def windows_per_batch(settings: RunSettings, patch_size: int, plans: tuple[AxisPlan, AxisPlan]) -> int:
    """`batch_size` counts windows of the model's patch size; larger windows go in batches of as many pixels."""
    return max(1, round(settings.batch_size * patch_size**2 / (plans[0].size * plans[1].size)))


def predict_blocks(
    model: torch.nn.Module,
    dataset: rasterio.DatasetReader,
    indexes: list[int],
    normalise: Normaliser,
    n_classes: int,
    plans: tuple[AxisPlan, AxisPlan],
    per_batch: int,
    settings: RunSettings,
    progress: tqdm | None = None,
) -> Iterator[RowBlock]:
    """Run the windows of `plans` row by row and yield each band of rows as soon as no later window touches it.
    Memory holds a few batches of input (read ahead on the settings' threads) and a (K, window height, W) accumulator, never
    the whole scene. Windows are counted on `progress` (a bar of its own when None)."""
    rows, cols = plans
    height, width = min(rows.size, dataset.height), min(cols.size, dataset.width)
    accumulator = np.zeros((n_classes, height, dataset.width), np.float32)
    weight_sum = np.zeros((height, dataset.width), np.float32)
    batches = window_batches(
        dataset, indexes, normalise, plans, per_batch, pin=settings.device.type == "cuda", readers=settings.threads
    )
    total = len(rows.starts) * len(cols.starts)
    bar = contextlib.nullcontext(progress) if progress is not None else tqdm(
        total=total, unit="window", desc="windows", mininterval=2.0
    )
    with bar as progress:
        first = progress.n
        for batch in prefetched(batches, PREFETCH_BATCHES):
            if batch.windows is not None:
                row_weights = rows.weights[batch.row_index][:height]
                weights = np.stack([np.outer(row_weights, cols.weights[j][:width]) for j in batch.col_indexes])
                probabilities = window_probabilities(model, batch.windows, settings)[:, :, :height, :width]
                weighted = (probabilities * torch.from_numpy(weights)[:, None].to(settings.device)).cpu().numpy()
                for j, window_probs, window_weights in zip(batch.col_indexes, weighted, weights):
                    col = cols.starts[j]
                    accumulator[:, :, col : col + width] += window_probs
                    weight_sum[:, col : col + width] += window_weights
                progress.update(len(batch.col_indexes))
            if batch.valid is not None:  # the last batch of its window row
                i = batch.row_index
                row = rows.starts[i]
                done = (rows.starts[i + 1] if i + 1 < len(rows.starts) else dataset.height) - row
                progress.update(first + (i + 1) * len(cols.starts) - progress.n)  # the skipped windows
                yield RowBlock(row, normalised_blend(accumulator[:, :done], weight_sum[:done]), batch.valid[:done])
                shift_up(accumulator, done)
                shift_up(weight_sum, done)


def pad_to_window(window: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad a (C, h, w) window at the bottom/right to (C, height, width) (only scenes smaller than a window)."""
    _, h, w = window.shape
    if (h, w) == (height, width):
        return window
    return np.pad(window, ((0, 0), (0, height - h), (0, width - w)))


def normalised_blend(accumulator: np.ndarray, weight_sum: np.ndarray) -> np.ndarray:
    """Weighted sum of window softmaxes divided by the summed weights (0 where no window ran)."""
    out = np.zeros_like(accumulator)
    np.divide(accumulator, weight_sum, out=out, where=weight_sum > 0)
    return out


def shift_up(array: np.ndarray, rows: int) -> None:
    """Move the rows of the last axis but one up by `rows` in place and zero the freed rows at the bottom."""
    array[..., : array.shape[-2] - rows, :] = array[..., rows:, :].copy()
    array[..., array.shape[-2] - rows :, :] = 0


def classes_from_block(block: RowBlock, threshold: float | None = None) -> np.ndarray:
    """Argmax class per pixel as uint8, IGNORE_INDEX where the scene is invalid. With a `threshold` (the
    thesis's thresholded prediction) the argmax is over `probability > threshold`: the first class above it,
    background (0) where none is."""
    probabilities = block.probabilities if threshold is None else block.probabilities > threshold
    classes = probabilities.argmax(axis=0).astype(np.uint8)
    classes[~block.valid] = IGNORE_INDEX
    return classes


def probabilities_as_bytes(block: RowBlock) -> np.ndarray:
    """Probabilities scaled to 0..255 uint8 (0 where invalid; the file's mask marks those pixels)."""
    scaled = np.rint(np.clip(block.probabilities, 0.0, 1.0) * 255).astype(np.uint8)
    scaled[:, ~block.valid] = 0
    return scaled


# ----------------------------------------------------------------------------------------------- writing


def probabilities_path(output: str | Path) -> Path:
    """The optional probability COG beside a prediction: {date}_proba.tif."""
    output = Path(output)
    return output.with_name(f"{output.stem}_proba{output.suffix}")


def write_cog(source: Path, output: str | Path, resampling: str) -> None:
    """Copy a finished GeoTIFF to `output` as a tiled, compressed COG with overviews, atomically."""
    with atomic_output(output) as tmp:
        rasterio.shutil.copy(
            source, tmp, driver="COG", compress="ZSTD", blocksize=512, overview_resampling=resampling,
            bigtiff="IF_SAFER",
        )  # fmt: skip


def write_prediction(
    blocks: Iterator[RowBlock],
    profile: dict,
    output: str | Path,
    class_names: list[str],
    tags: dict[str, str],
    probabilities: bool,
    threshold: float | None = None,
) -> None:
    """Stream row blocks into plain GeoTIFFs in a scratch folder beside `output`, then copy them to COGs
    (probabilities first, so the mask, the Snakemake output, appears last)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    base = {
        "driver": "GTiff", "width": profile["width"], "height": profile["height"], "crs": profile["crs"],
        "transform": profile["transform"], "dtype": "uint8", "tiled": False, "bigtiff": "IF_SAFER",
    }  # fmt: skip
    class_tags = {f"CLASS_{i}": name for i, name in enumerate(class_names)} | {"classes": json.dumps(class_names)}
    layers = 1 + (len(class_names) + 1 if probabilities else 0)  # bytes per pixel: classes, probabilities, mask
    needs_bytes = 2 * layers * profile["width"] * profile["height"]  # the plain GeoTIFFs and their COGs
    with scratch_folder(output, needs_bytes=needs_bytes) as scratch:
        mask_path, proba_path = Path(scratch) / "mask.tif", Path(scratch) / "proba.tif"
        with contextlib.ExitStack() as stack:
            stack.enter_context(gdal_errors_raised(f"{output} (its scratch rasters)"))  # checked once they are closed
            mask = stack.enter_context(rasterio.open(mask_path, "w", **base, count=1, nodata=IGNORE_INDEX))
            mask.write_colormap(1, class_colour_table(class_names))
            mask.set_band_description(1, "class")
            mask.update_tags(**tags, **class_tags)
            proba = None
            if probabilities:
                proba = stack.enter_context(rasterio.open(proba_path, "w", **base, count=len(class_names)))
                for i, name in enumerate(class_names, start=1):
                    proba.set_band_description(i, f"p_{name}")
                proba.update_tags(**tags, **class_tags, scale="probability = value / 255")

            def write(block: RowBlock) -> None:
                window = Window(0, block.row, profile["width"], block.valid.shape[0])
                mask.write(classes_from_block(block, threshold), 1, window=window)
                if proba is not None:
                    proba.write(probabilities_as_bytes(block), window=window)
                    proba.write_mask(np.where(block.valid, 255, 0).astype(np.uint8), window=window)

            with ThreadPoolExecutor(max_workers=1) as writer:  # writes while the network runs the next rows
                pending = None
                for block in blocks:
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(write, block)
                if pending is not None:
                    pending.result()
        if probabilities:
            write_cog(proba_path, probabilities_path(output), "AVERAGE")
        write_cog(mask_path, output, "MODE")


# ----------------------------------------------------------------------------------------------- the rule


def checkpoint_normaliser(spec: dict, scene: str | Path) -> Normaliser:
    """The normalisation a checkpoint was trained with, bound to this scene's statistics (if the spec has any)."""
    statistics = normalisation.scene_statistics(spec, scene)
    log.info("normalisation from the checkpoint: %s", normalisation.describe(spec))
    return lambda window, valid, source: normalisation.apply(spec, window, valid, statistics, source=source)


def provenance_tags(
    model_path: str | Path, metadata: dict, scene: str | Path, options: dict, settings: RunSettings
) -> dict[str, str]:
    """Tags that say which model made a prediction, from which scene, and how."""
    return {
        "model_path": str(model_path),
        "model_sha256": file_sha256(model_path),
        "experiment": str(metadata.get("experiment") or Path(model_path).parent.name),
        "dataset": str(metadata.get("dataset", "")),
        "architecture": json.dumps({"name": metadata["architecture"], **metadata["model_args"]}),
        "bands": json.dumps(list(metadata["bands"])),
        "normalisation": json.dumps(metadata["normalisation"]),
        "patch_size": str(metadata["patch_size"]),
        "scene": str(scene),
        "inference": json.dumps({**scheme_description(options), "tta": settings.tta, "precision": settings.precision,
                                 "device": settings.device.type}),
        "snowcloud_version": snowcloud.__version__,
    }  # fmt: skip


def require_valid_pixels(blocks: Iterator[RowBlock], scene: str | Path) -> Iterator[RowBlock]:
    """Pass the blocks through; fail at the end (before anything is renamed into place) if none had a valid pixel."""
    valid_count = 0
    for block in blocks:
        valid_count += int(block.valid.sum())
        yield block
    if valid_count == 0:
        raise InferenceError(f"scene {scene} has no valid pixel (every pixel is nodata): nothing to predict")


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint ready to predict: the network on its device, its metadata and how windows are run."""

    path: str
    network: torch.nn.Module
    metadata: dict
    settings: RunSettings

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.get("classes", CLASSES))

    @property
    def patch_size(self) -> int:
        return int(self.metadata["patch_size"])


def load_for_inference(model_path: str | Path, options: dict, threads: int = 1) -> LoadedModel:
    """Load a checkpoint for prediction with the inference `options` (device, amp, batch_size, tta)."""
    settings = run_settings(options, threads)
    model, metadata = checkpoint.load_model(model_path, settings.device)
    missing = [key for key in checkpoint.INFERENCE_METADATA if key not in metadata]
    if missing:
        raise InferenceError(f"checkpoint {model_path} lacks {', '.join(missing)} in its metadata: it cannot be run")
    return LoadedModel(str(model_path), prepare_model(model, settings), metadata, settings)


def predict_scene(model_path: str, scene: str, output: str, options: dict, threads: int = 1) -> None:
    """Predict the class mask of one scene raster with a checkpoint, using the checkpoint's bands and
    normalisation; write it (and optionally `{date}_proba.tif`) as COGs."""
    options = validated(options, "inference")
    predict_with(load_for_inference(model_path, options, threads), scene, output, options)


def predict_with(
    model: LoadedModel, scene: str | Path, output: str | Path, options: dict, progress: tqdm | None = None
) -> None:
    """Predict one scene raster with a loaded model (see predict_scene); windows are counted on `progress`."""
    start = time.perf_counter()
    metadata = model.metadata
    with gdal_env(GDAL_CACHE_MB), rasterio.open(scene) as dataset:
        needed_by = f"the model {model.path} (model bands: {', '.join(metadata['bands'])})"
        indexes = band_indexes(dataset, list(metadata["bands"]), needed_by)
        normalise = checkpoint_normaliser(metadata["normalisation"], scene)
        plans = axis_plans(dataset.height, dataset.width, model.patch_size, options)
        per_batch = windows_per_batch(model.settings, model.patch_size, plans)
        log.info(
            "%d x %d pixels, %d x %d windows of %d x %d px (%s; each pixel computed %.2f times), %d per batch, "
            "TTA %s, %s on %s", dataset.height, dataset.width, len(plans[0].starts), len(plans[1].starts),
            plans[0].size, plans[1].size, scheme_description(options),
            plans[0].work(dataset.height) * plans[1].work(dataset.width), per_batch, model.settings.tta,
            model.settings.precision, model.settings.device,
        )  # fmt: skip
        blocks = predict_blocks(model.network, dataset, indexes, normalise, len(model.class_names), plans, per_batch,
                                model.settings, progress)  # fmt: skip
        tags = provenance_tags(model.path, metadata, scene, options, model.settings)
        write_prediction(require_valid_pixels(blocks, scene), dataset.profile, output, model.class_names, tags,
                         options["probabilities"], options["threshold"])  # fmt: skip
    stale = probabilities_path(output)
    if not options["probabilities"] and stale.exists():
        log.info("removing %s left by an earlier run (probabilities are off now)", stale)
        stale.unlink()
    log.info("predicted %s -> %s in %.1f s", scene, output, time.perf_counter() - start)


def predict_scene_and_quicklook(
    model_path: str, scene: str, output: str, quicklook_path: str, options: dict, threads: int = 1
) -> None:
    """predict_scene, then the quicklook of the new prediction: the workflow's `infer` job (one job per scene,
    so a run of many dates does not pay a second job's scheduling and start-up for the quicklook)."""
    predict_scene(model_path, scene, output, options, threads)
    quicklook(scene, output, quicklook_path)
