"""Full-scene prediction: the windows of snowcloud.windows (large windows whose margins are discarded, the
default, or patch-size windows blended with weights normalised by their sum) through the network, flip TTA,
blending on the inference device, reading and writing overlapped with the network, bounded memory; the mask
written by snowcloud.mask."""

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
import torch
from rasterio.windows import Window
from tqdm import tqdm

import snowcloud
from snowcloud import checkpoint, normalisation
from snowcloud.accelerator import autocast_dtype, precision_name, resolve_device
from snowcloud.config import validated
from snowcloud.gdal import gdal_env
from snowcloud.labels import recorded_classes
from snowcloud.mask import RowBlock, probabilities_path, write_prediction
from snowcloud.provenance import file_sha256
from snowcloud.resample import Scratch, thread_scratch
from snowcloud.scene import band_indexes, identity_tags, valid_pixels
from snowcloud.windows import AxisPlan, axis_plans, scheme_description

log = logging.getLogger(__name__)

# Flip TTA: identity, flip W, flip H, flip H and W (dims of a (B, C, H, W) tensor); each is its own inverse.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

# A normaliser maps a (C, H, W) window of scene values (int16 as a scene raster stores them, or float32), its
# (H, W) valid mask and a name for error messages to the model input (C, H, W) float32, 0 at invalid pixels.
Normaliser = Callable[[np.ndarray, np.ndarray, str], np.ndarray]

# GDAL block cache while predicting (GDAL's default is 5 % of the RAM): about three rows of 512 x 512 tiles of a
# 14-band 10980-wide scene (161 MB each), so overlapping windows seldom decode a tile twice.
GDAL_CACHE_MB = 512
PREFETCH_BATCHES = 2  # batches read and normalised ahead of the network


class InferenceError(ValueError):
    """A model and a scene that cannot be run together; the message names both files."""


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
        device=device,
        batch_size=int(options["batch_size"]),
        tta=bool(options["tta"]),
        amp_dtype=autocast_dtype(options.get("amp", True), device),
        threads=max(1, threads),
    )


def prepare_model(model: torch.nn.Module, settings: RunSettings) -> torch.nn.Module:
    """The model in eval mode on the device, channels-last on a GPU."""
    model = model.to(settings.device).eval()
    if settings.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


class TensorScratch:
    """Named float32 work tensors reused from call to call on the CPU, where every fresh tensor of tens of MB
    pays its page faults again (torch hands large blocks back to the system); on a GPU `tensor` gives None
    (torch then allocates, from CUDA's caching allocator, which reuses its blocks anyway)."""

    def __init__(self, device: torch.device):
        self.arrays = Scratch() if device.type == "cpu" else None

    def tensor(self, name: str, shape: torch.Size) -> torch.Tensor | None:
        return None if self.arrays is None else torch.from_numpy(self.arrays.array(name, tuple(shape)))


def reversed_view(array: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """A view of `array` reversed along `dims` (numpy's negative strides; torch has none)."""
    index = [slice(None)] * array.ndim
    for dim in dims:
        index[dim] = slice(None, None, -1)
    return array[tuple(index)]


def flipped(tensor: torch.Tensor, dims: tuple[int, ...], out: torch.Tensor | None) -> torch.Tensor:
    """`tensor` flipped along `dims`, written into `out` where one is given (torch.flip always allocates)."""
    if out is None:
        return tensor.flip(dims)
    np.copyto(out.numpy(), reversed_view(tensor.numpy(), dims))
    return out


def add_flipped(total: torch.Tensor, tensor: torch.Tensor, dims: tuple[int, ...]) -> None:
    """total += `tensor` flipped along `dims`; on the CPU in one pass over a reversed view, without a copy."""
    if total.device.type != "cpu":
        total.add_(tensor.flip(dims))
    else:
        np.add(total.numpy(), reversed_view(tensor.numpy(), dims), out=total.numpy())


def window_probabilities(
    model: torch.nn.Module, windows: torch.Tensor, settings: RunSettings, scratch: TensorScratch | None = None
) -> torch.Tensor:
    """Softmax (B, K, h, w) float32 of a batch of (B, C, h, w) windows, averaged over the flips when TTA is on
    (each flipped output is flipped back and added in place, in the order of FLIPS, then divided by their
    number). With `scratch` the result lives in its tensors until the next call."""
    scratch = scratch or TensorScratch(settings.device)
    batch = windows.to(settings.device, non_blocking=True)
    if settings.device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last)
    flips = FLIPS if settings.tta else FLIPS[:1]
    total = None
    with torch.inference_mode():
        for dims in flips:  # the first is the identity
            inputs = flipped(batch, dims, scratch.tensor("input", batch.shape)) if dims else batch
            with torch.autocast(
                settings.device.type, dtype=settings.amp_dtype or torch.float32, enabled=settings.amp_dtype is not None
            ):
                logits = model(inputs).float()
            if total is None:
                total = torch.softmax(logits, dim=1, out=scratch.tensor("total", logits.shape))
            else:
                add_flipped(total, torch.softmax(logits, dim=1, out=scratch.tensor("softmax", logits.shape)), dims)
        return total.div_(len(flips))


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
    dataset: rasterio.DatasetReader,
    indexes: list[int],
    window: Window,
    normalise: Normaliser,
    lock: contextlib.AbstractContextManager | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The given bands in a window, normalised, and where all of them hold data. The raw values are read (under
    `lock`, where threads share the dataset) into the calling thread's scratch array; the normalised window is
    a new one."""
    shape = (len(indexes), int(window.height), int(window.width))
    with lock or contextlib.nullcontext():
        scratch = thread_scratch().array("window", shape, np.dtype(dataset.dtypes[0]))
        raw, nodata = dataset.read(indexes, window=window, out=scratch), dataset.nodata
    valid = valid_pixels(raw, nodata)
    source = f"{dataset.name} rows {window.row_off}..{window.row_off + window.height} columns {window.col_off}.."
    return normalise(raw, valid, source + f"{window.col_off + window.width}"), valid


def read_ahead(
    path: str, indexes: list[int], normalise: Normaliser, windows: list[Window], readers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """read_window over `windows`, in their order, on `readers` threads, at most 2 x `readers` windows ahead.
    The threads read one at a time through one handle on the raster, whose GDAL decodes each window's tiles on
    `readers` threads and keeps them in its block cache for the neighbouring windows (a handle per thread
    decoded the tiles that neighbours share once per handle: twice the decoding); they normalise in parallel
    (numpy's arithmetic runs outside the GIL)."""
    dataset = rasterio.open(path, num_threads=readers)
    lock = threading.Lock()
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="snowcloud-read")
    try:
        for window in windows:
            pending.append(pool.submit(read_window, dataset, indexes, window, normalise, lock))
            if len(pending) >= 2 * readers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # closed early (an error downstream): drop the reads not started, wait for the running ones
        pool.shutdown(cancel_futures=True)
        dataset.close()


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
        windows = torch.from_numpy(np.stack(images) if len(images) > 1 else images[0][None]) if images else None
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
    """Run the windows of `plans` row by row and yield each band of rows as soon as no later window touches it,
    its probabilities blended on the inference device (a view of the accumulator there: use it before asking
    for the next block). Where every pixel is one window's core (the margin scheme), the blend is that window's
    value, copied (exactly what weights 1 and 0 summed and divided by 1 give). Memory holds a few batches of
    input (read ahead on the settings' threads) and a (K, window height, W) accumulator, never the whole scene.
    Windows are counted on `progress` (a bar of its own when None)."""
    rows, cols = plans
    height, width = min(rows.size, dataset.height), min(cols.size, dataset.width)
    cores = (rows.cores(), cols.cores()) if rows.cores() and cols.cores() else None
    with torch.inference_mode():
        accumulator = torch.zeros((n_classes, height, dataset.width), device=settings.device)
        # summed blending weights, not needed where every pixel is one window's core
        weight_sum = torch.zeros((height, dataset.width), device=settings.device) if cores is None else None
    scratch = TensorScratch(settings.device)
    made: dict[tuple[int, int], torch.Tensor] = {}  # window_weights on the device
    batches = window_batches(
        dataset, indexes, normalise, plans, per_batch, pin=settings.device.type == "cuda", readers=settings.threads
    )
    total = len(rows.starts) * len(cols.starts)
    bar = (
        contextlib.nullcontext(progress)
        if progress is not None
        else tqdm(total=total, unit="window", desc="windows", mininterval=2.0)
    )
    with bar as progress:
        first = progress.n
        for batch in prefetched(batches, PREFETCH_BATCHES):
            if batch.windows is not None:
                probabilities = window_probabilities(model, batch.windows, settings, scratch)
                with torch.inference_mode():
                    for j, window in zip(batch.col_indexes, probabilities[:, :, :height, :width]):
                        col = cols.starts[j]
                        if cores is not None:  # the window's core is the blend there: copied, nothing to weigh
                            (top, bottom), (left, right) = cores[0][batch.row_index], cores[1][j]
                            accumulator[:, top:bottom, col + left : col + right] = window[:, top:bottom, left:right]
                            continue
                        weights = window_weights(plans, batch.row_index, j, (height, width), settings.device, made)
                        accumulator[:, :, col : col + width] += window.mul_(weights)
                        weight_sum[:, col : col + width] += weights
                progress.update(len(batch.col_indexes))
            if batch.valid is not None:  # the last batch of its window row
                i = batch.row_index
                row = rows.starts[i]
                done = (rows.starts[i + 1] if i + 1 < len(rows.starts) else dataset.height) - row
                progress.update(first + (i + 1) * len(cols.starts) - progress.n)  # the skipped windows
                with torch.inference_mode():
                    blended = accumulator[:, :done]
                    if weight_sum is not None:
                        blended = normalised_blend(blended, weight_sum[:done])
                yield RowBlock(row, blended, batch.valid[:done])
                with torch.inference_mode():
                    shift_up(accumulator, done)
                    if weight_sum is not None:
                        shift_up(weight_sum, done)


def window_weights(
    plans: tuple[AxisPlan, AxisPlan],
    i: int,
    j: int,
    shape: tuple[int, int],
    device: torch.device,
    made: dict[tuple[int, int], torch.Tensor],
) -> torch.Tensor:
    """The blending weights of window (i, j) cut to `shape`, on the device: the outer product of its axes'
    weights, made once per pair of weight arrays in `made` (the blend scheme's windows share one pair, so a GPU
    gets no copy from pageable memory, which waits for its queue, per window)."""
    rows, cols = plans
    key = (id(rows.weights[i]), id(cols.weights[j]))
    if key not in made:
        made[key] = torch.from_numpy(np.outer(rows.weights[i][: shape[0]], cols.weights[j][: shape[1]])).to(device)
    return made[key]


def pad_to_window(window: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad a (C, h, w) window at the bottom/right to (C, height, width) (only scenes smaller than a window)."""
    _, h, w = window.shape
    if (h, w) == (height, width):
        return window
    return np.pad(window, ((0, 0), (0, height - h), (0, width - w)))


def normalised_blend(accumulator: torch.Tensor, weight_sum: torch.Tensor) -> torch.Tensor:
    """Weighted sums of window softmaxes (K, h, W) divided in place by the summed weights (h, W); 0 where no
    window ran (there the sums are 0 as well)."""
    return accumulator.div_(weight_sum).masked_fill_(weight_sum == 0, 0.0)


def shift_up(tensor: torch.Tensor, rows: int) -> None:
    """Move the rows of the last axis but one up by `rows` in place and zero the freed rows at the bottom."""
    kept = tensor.shape[-2] - rows
    tensor[..., :kept, :] = tensor[..., rows:, :].clone()
    tensor[..., kept:, :] = 0


# ----------------------------------------------------------------------------------------------- the rule


def checkpoint_normaliser(spec: dict, scene: str | Path) -> Normaliser:
    """The normalisation a checkpoint was trained with, bound to this scene's statistics (if the spec has any)."""
    statistics = normalisation.scene_statistics(spec, scene)
    log.info("normalisation from the checkpoint: %s", normalisation.describe(spec))
    return normalisation.Normaliser(spec, statistics)


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
        "inference": json.dumps(
            {
                **scheme_description(options),
                "tta": settings.tta,
                "precision": settings.precision,
                "device": settings.device.type,
            }
        ),
        "snowcloud_version": snowcloud.__version__,
    }


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
        return recorded_classes(self.metadata, self.path)

    @property
    def patch_size(self) -> int:
        return int(self.metadata["patch_size"])


def load_for_inference(model_path: str | Path, options: dict, threads: int = 1) -> LoadedModel:
    """Load a checkpoint for prediction with the inference `options` (device, amp, batch_size, tta)."""
    settings = run_settings(options, threads)
    model, metadata = checkpoint.load_runnable(model_path, settings.device)
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
            "TTA %s, %s on %s",
            dataset.height,
            dataset.width,
            len(plans[0].starts),
            len(plans[1].starts),
            plans[0].size,
            plans[1].size,
            scheme_description(options),
            plans[0].work(dataset.height) * plans[1].work(dataset.width),
            per_batch,
            model.settings.tta,
            model.settings.precision,
            model.settings.device,
        )
        blocks = predict_blocks(
            model.network,
            dataset,
            indexes,
            normalise,
            len(model.class_names),
            plans,
            per_batch,
            model.settings,
            progress,
        )
        tags = provenance_tags(model.path, metadata, scene, options, model.settings) | identity_tags(dataset)
        write_prediction(
            require_valid_pixels(blocks, scene),
            dataset.profile,
            output,
            model.class_names,
            tags,
            options["probabilities"],
            options["threshold"],
        )
    stale = probabilities_path(output)
    if not options["probabilities"] and stale.exists():
        log.info("removing %s left by an earlier run (probabilities are off now)", stale)
        stale.unlink()
    log.info("predicted %s -> %s in %.1f s", scene, output, time.perf_counter() - start)
