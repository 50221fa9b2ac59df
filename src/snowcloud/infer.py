"""Full-scene prediction: overlapping windows, blending normalised by the summed weights, flip TTA, bounded
memory; the class mask (and optionally the probabilities) as COGs; quicklook PNGs."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window
from tqdm import tqdm

import snowcloud
from snowcloud import checkpoint, normalisation
from snowcloud.atomic import atomic_output, scratch_folder
from snowcloud.bands import CLASSES, IGNORE_INDEX, class_colour_table
from snowcloud.config import validated
from snowcloud.gdal import gdal_env, gdal_errors_raised
from snowcloud.provenance import file_sha256
from snowcloud.scene import band_indexes, valid_pixels

log = logging.getLogger(__name__)

# Flip TTA: identity, flip W, flip H, flip H and W (dims of a (B, C, H, W) tensor); each is its own inverse.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

# A normaliser maps a (C, H, W) float32 window of scene values, its (H, W) valid mask and a name for error
# messages to the model input (C, H, W) float32, 0 at invalid pixels.
Normaliser = Callable[[np.ndarray, np.ndarray, str], np.ndarray]

READ_CHUNK_COLUMNS = 1024  # scene columns read and normalised at once (two 512-pixel COG tiles)
# GDAL block cache while predicting (GDAL's default is 5 % of the RAM): two rows of 512 x 512 tiles of a 14-band
# 10980-wide scene (2 x 161 MB), so each tile is decoded once although overlapping strips read it up to 4 times.
GDAL_CACHE_MB = 512


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


def window_count(height: int, width: int, patch_size: int, overlap: float) -> int:
    """Windows that cover a height x width scene (before skipping those without a valid pixel)."""
    stride = window_stride(patch_size, overlap)
    return len(window_starts(height, patch_size, stride)) * len(window_starts(width, patch_size, stride))


def blending_weights(patch_size: int) -> np.ndarray:
    """Separable sine (cosine-bell) window sampled at pixel centres: smooth, 1 in the centre and > 0 up to
    the edges, so every covered pixel has a positive summed weight."""
    profile = np.sin(np.pi * (np.arange(patch_size) + 0.5) / patch_size)
    return np.outer(profile, profile).astype(np.float32)


# ----------------------------------------------------------------------------------------------- model runs


@dataclass(frozen=True)
class RunSettings:
    """How windows go through the model: device, batch size, flips, precision."""

    device: torch.device
    batch_size: int
    tta: bool
    amp_dtype: torch.dtype | None  # None: float32

    @property
    def precision(self) -> str:
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")


def run_settings(options: dict, threads: int = 1) -> RunSettings:
    """Resolve `options` (device, amp, batch_size, tta) for this machine; on a CPU use `threads` threads."""
    requested = options.get("device", "auto")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InferenceError("inference.device is 'cuda' but PyTorch sees no CUDA device on this machine")
    device = torch.device(
        "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"
    )
    amp_dtype = None
    if device.type == "cuda" and options.get("amp", True):
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    return RunSettings(
        device=device, batch_size=int(options["batch_size"]), tta=bool(options["tta"]), amp_dtype=amp_dtype
    )


def prepare_model(model: torch.nn.Module, settings: RunSettings) -> torch.nn.Module:
    """The model in eval mode on the device, channels-last on a GPU."""
    model = model.to(settings.device).eval()
    if settings.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def window_probabilities(model: torch.nn.Module, windows: np.ndarray, settings: RunSettings) -> torch.Tensor:
    """Softmax (B, K, P, P) float32 of a batch of (B, C, P, P) windows, averaged over the flips when TTA is on
    (each flipped output is flipped back before averaging)."""
    batch = torch.from_numpy(windows).to(settings.device, non_blocking=True)
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


def read_strip(
    dataset: rasterio.DatasetReader, indexes: list[int], row: int, height: int, normalise: Normaliser
) -> tuple[np.ndarray, np.ndarray]:
    """Rows row..row+height of the given bands, normalised, and where all of them hold data. Read and
    normalised in column chunks, so the normalisation's temporaries stay small beside the strip."""
    image = np.empty((len(indexes), height, dataset.width), np.float32)
    valid = np.empty((height, dataset.width), bool)
    for col in range(0, dataset.width, READ_CHUNK_COLUMNS):
        width = min(READ_CHUNK_COLUMNS, dataset.width - col)
        raw = dataset.read(indexes, window=Window(col, row, width, height))
        chunk_valid = valid_pixels(raw, dataset.nodata)
        source = f"{dataset.name} rows {row}..{row + height} columns {col}..{col + width}"
        image[:, :, col : col + width] = normalise(raw.astype(np.float32), chunk_valid, source)
        valid[:, col : col + width] = chunk_valid
    return image, valid


# ----------------------------------------------------------------------------------------------- blending


@dataclass
class RowBlock:
    """Finished rows of a scene: blended class probabilities (K, rows, W) and the valid mask (rows, W)."""

    row: int
    probabilities: np.ndarray
    valid: np.ndarray


def predict_blocks(
    model: torch.nn.Module,
    dataset: rasterio.DatasetReader,
    indexes: list[int],
    normalise: Normaliser,
    n_classes: int,
    patch_size: int,
    overlap: float,
    settings: RunSettings,
    progress: tqdm | None = None,
) -> Iterator[RowBlock]:
    """Slide windows over the scene strip by strip and yield each band of rows as soon as no later window
    touches it. Memory holds one strip of input and a (K, P, W) accumulator, never the whole scene. Windows
    are counted on `progress` (a bar of its own when None)."""
    height, width = dataset.height, dataset.width
    stride = window_stride(patch_size, overlap)
    rows = window_starts(height, patch_size, stride)
    cols = window_starts(width, patch_size, stride)
    strip_height, window_width = min(patch_size, height), min(patch_size, width)
    weights = blending_weights(patch_size)[:strip_height, :window_width]
    weights_on_device = torch.from_numpy(weights).to(settings.device)
    accumulator = np.zeros((n_classes, strip_height, width), np.float32)
    weight_sum = np.zeros((strip_height, width), np.float32)
    log.info(
        "%d x %d pixels, %d x %d windows of %d px (stride %d), batch %d, TTA %s, %s on %s",
        height, width, len(rows), len(cols), patch_size, stride, settings.batch_size, settings.tta,
        settings.precision, settings.device,
    )  # fmt: skip

    def read(row: int) -> tuple[np.ndarray, np.ndarray]:
        return read_strip(dataset, indexes, row, strip_height, normalise)

    bar = contextlib.nullcontext(progress) if progress is not None else tqdm(
        total=len(rows) * len(cols), unit="window", desc="windows", mininterval=2.0
    )
    with ThreadPoolExecutor(max_workers=1) as reader, bar as progress:
        upcoming = reader.submit(read, rows[0])
        for i, row in enumerate(rows):
            image, valid = upcoming.result()
            if i + 1 < len(rows):
                upcoming = reader.submit(read, rows[i + 1])  # read ahead while the model runs
            useful = [col for col in cols if valid[:, col : col + window_width].any()]
            progress.update(len(cols) - len(useful))
            for start in range(0, len(useful), settings.batch_size):
                batch_cols = useful[start : start + settings.batch_size]
                windows = np.stack([pad_to_patch(image[:, :, c : c + window_width], patch_size) for c in batch_cols])
                probabilities = window_probabilities(model, windows, settings)[:, :, :strip_height, :window_width]
                weighted = (probabilities * weights_on_device).cpu().numpy()
                for col, window_probs in zip(batch_cols, weighted):
                    accumulator[:, :, col : col + window_width] += window_probs
                    weight_sum[:, col : col + window_width] += weights
                progress.update(len(batch_cols))
            done = (rows[i + 1] if i + 1 < len(rows) else height) - row
            yield RowBlock(row, normalised_blend(accumulator[:, :done], weight_sum[:done]), valid[:done])
            shift_up(accumulator, done)
            shift_up(weight_sum, done)


def pad_to_patch(window: np.ndarray, patch_size: int) -> np.ndarray:
    """Zero-pad a (C, h, w) window at the bottom/right to (C, P, P) (only scenes smaller than a patch)."""
    _, h, w = window.shape
    if (h, w) == (patch_size, patch_size):
        return window
    return np.pad(window, ((0, 0), (0, patch_size - h), (0, patch_size - w)))


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
            mask.write_colormap(1, class_colour_table())
            mask.set_band_description(1, "class")
            mask.update_tags(**tags, **class_tags)
            proba = None
            if probabilities:
                proba = stack.enter_context(rasterio.open(proba_path, "w", **base, count=len(class_names)))
                for i, name in enumerate(class_names, start=1):
                    proba.set_band_description(i, f"p_{name}")
                proba.update_tags(**tags, **class_tags, scale="probability = value / 255")
            for block in blocks:
                window = Window(0, block.row, profile["width"], block.valid.shape[0])
                mask.write(classes_from_block(block, threshold), 1, window=window)
                if proba is not None:
                    proba.write(probabilities_as_bytes(block), window=window)
                    proba.write_mask(np.where(block.valid, 255, 0).astype(np.uint8), window=window)
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
        "inference": json.dumps({"overlap": options["overlap"], "tta": settings.tta, "precision": settings.precision,
                                 "device": settings.device.type, "blending": "sine window, normalised"}),
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
        blocks = predict_blocks(model.network, dataset, indexes, normalise, len(model.class_names), model.patch_size,
                                options["overlap"], model.settings, progress)  # fmt: skip
        tags = provenance_tags(model.path, metadata, scene, options, model.settings)
        write_prediction(require_valid_pixels(blocks, scene), dataset.profile, output, model.class_names, tags,
                         options["probabilities"], options["threshold"])  # fmt: skip
    stale = probabilities_path(output)
    if not options["probabilities"] and stale.exists():
        log.info("removing %s left by an earlier run (probabilities are off now)", stale)
        stale.unlink()
    log.info("predicted %s -> %s in %.1f s", scene, output, time.perf_counter() - start)
