"""Preprocess stage: one L1C product (+ DEM) -> the scene raster results/scenes/{tile}/{date}.tif.

The 13 bands on B02's 10 m grid (20 m / 60 m bands upsampled by snowcloud.resample), value = DN +
RADIO_ADD_OFFSET in a signed type, saturating at 32767, clipped per config; the DEM reprojected onto the
same grid as band 14 (ELEVATION, metres); nodata -32768 in every band wherever any band but B10 has DN 0 (or the
DEM is missing): B10 reads 0 over dark water in valid pixels, so its 0 is kept as a value
(`scene.ZERO_IS_VALUE_BANDS`). The JP2 files are decoded once, in strips of `block_rows` 10 m rows, so memory does not grow
with the tile:

1. the bands of a strip (and its DEM rows) are read through GDAL (/vsizip/ for zips), upsampled, offset and
   saturated in parallel threads, while the main thread masks, counts and hands on the strip before;
2. without clipping, each strip goes straight to snowcloud.cog.CogWriter, which compresses the COG's tiles
   (and its average overviews) as soon as they are complete and in the end copies them into COG order;
3. with clipping, the strips go to an uncompressed temporary GeoTIFF beside the output while exact per-band
   histograms of the int16 values of the valid pixels are gathered; the limits come from those (statistics
   of the 10 m values of the whole scene, exact, without decoding the JP2 files twice), and the strips are
   read back, clipped and handed to the CogWriter.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window
from tqdm import tqdm

import snowcloud
from snowcloud.atomic import atomic_output, temporary_path
from snowcloud.bands import BANDS, RESOLUTION_M
from snowcloud.cog import CogWriter
from snowcloud.config import validated
from snowcloud.counting import bincount_in_chunks
from snowcloud.dem import DemOnGrid
from snowcloud.gdal import gdal_env
from snowcloud.resample import (
    MARGIN,
    RESULT,
    ROWS_AT_ONCE,
    gain,
    phase_taps,
    replicate_edges,
    thread_scratch,
    upsample,
)
from snowcloud.safe import SafeProduct, open_safe
from snowcloud.scene import (
    NODATA,
    PREPROCESS_TAG,
    VALUE_RANGE,
    channel_names,
    product_band_valid,
    store_values,
)
from snowcloud.scene import profile as scene_profile

log = logging.getLogger(__name__)

HISTOGRAM_SIZE = 65536  # one bin per int16 value
COG_BLOCK_SIZE = 512
ZSTD_LEVEL = 1  # 5x faster than GDAL's default 9 for ~10 % larger files (with the horizontal predictor)
# GDAL's block cache must hold the JP2 tiles a strip shares with the next one (one 1024-row tile row of all
# 13 bands of a full tile: 170 MB) beside the tiles being decoded, or they are decoded twice (256 MB is too
# little, 384 MB enough on a full tile; the margin is for the COG tiles being compressed and the DEM).
GDAL_CACHE_MB = 512


class PreprocessError(ValueError):
    """A scene that cannot be preprocessed; the message names the file and the problem."""


def preprocess_scene(safe, dem: str | None, output, options: dict, threads: int = 1) -> None:
    """SAFE product (+ DEM) -> scene raster COG at `output` (see the module docstring)."""
    start = time.perf_counter()
    options = validated(options, "preprocess")
    product = open_safe(safe)
    if options["dem"] and not dem:
        raise PreprocessError(f"preprocess.dem is on but no DEM was given for {product.path}")
    gdal = gdal_env(GDAL_CACHE_MB, GDAL_NUM_THREADS=str(threads), GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
    with gdal, contextlib.ExitStack() as resources:
        elevation = resources.enter_context(DemOnGrid(dem, product, options, threads)) if options["dem"] else None
        if elevation is not None:
            elevation.check_coverage_estimate()
        profile = scene_profile(product.width, product.height, elevation is not None, product.crs, product.transform)
        final = resources.enter_context(atomic_output(output, _space_needed(profile, options)))
        writer = resources.enter_context(
            CogWriter(final, profile, options["overviews"], threads, COG_BLOCK_SIZE, **_compression(options))
        )
        if options["clip"]["method"] == "none":
            summary = _read_strips(product, elevation, options, threads, writer.write)
            _check_summary(product, elevation, summary)
            limits = {}
        else:
            stack = resources.enter_context(_TemporaryStrips(temporary_path(output, label="strips.tif"), profile))
            summary = _read_strips(product, elevation, options, threads, stack.write)
            _check_summary(product, elevation, summary)
            limits = clip_limits(summary.histograms, options["clip"])
            _write_clipped(stack, limits, options["block_rows"], writer.write)
        writer.finish(lambda dataset: _describe(dataset, product, elevation, options, limits, summary))
    log.info(
        "%s -> %s: %.1f %% valid, %s clipping, %.1f s",
        product.name,
        output,
        100 * summary.valid / summary.pixels,
        options["clip"]["method"],
        time.perf_counter() - start,
    )


def _space_needed(profile: dict, options: dict) -> int:
    """Bytes of disk the scene raster takes on the way, about: its COG parts and the assembled COG (with
    overviews, each about half the raw size once compressed), and the raw strips file when clipping."""
    raw = profile["width"] * profile["height"] * profile["count"] * np.dtype(profile["dtype"]).itemsize
    compressed = raw * (4 / 3 if options["overviews"] else 1) / 2
    return int(2 * compressed + (raw if options["clip"]["method"] != "none" else 0))


def _compression(options: dict) -> dict:
    """GTiff creation options of the COG's tiles (the horizontal predictor suits the int16 bands)."""
    creation = dict(compress=options["compress"], predictor=2)
    if options["compress"] == "zstd":
        creation["zstd_level"] = ZSTD_LEVEL
    return creation


@dataclass
class StripSummary:
    """What the strip pass learnt about the whole scene."""

    pixels: int = 0
    valid: int = 0
    dem_missing: int = 0
    histograms: dict[str, np.ndarray] = field(default_factory=dict)


def _read_strips(
    product: SafeProduct,
    elevation: DemOnGrid | None,
    options: dict,
    threads: int,
    sink: Callable[[np.ndarray, int], None],
) -> StripSummary:
    """The pass over the JP2 files: every strip of the scene on the 10 m grid, masked, handed in order to
    `sink(values, row)`. The bands (and DEM rows) of the next strip are read and upsampled in `threads`
    threads while the sink takes the strip before (two strip buffers take turns)."""
    block_rows = min(options["block_rows"], product.height)
    taps = {k: phase_taps(k, options["resampling"], options["cubic_a"]) for k in (2, 6)}
    summary = StripSummary(pixels=product.width * product.height)
    if options["clip"]["method"] != "none":
        summary.histograms = {band: np.zeros(HISTOGRAM_SIZE, dtype=np.int64) for band in BANDS}
    channels = len(channel_names(elevation is not None))
    buffers = [np.empty((channels, block_rows, product.width), dtype=np.int16) for _ in range(2)]
    rows_of = [(row, min(block_rows, product.height - row)) for row in range(0, product.height, block_rows)]
    with contextlib.ExitStack() as stack:
        sources = {
            band: (stack.enter_context(rasterio.open(product.band_paths[band])), threading.Lock()) for band in BANDS
        }
        pool = ThreadPoolExecutor(threads)
        stack.callback(pool.shutdown, cancel_futures=True)

        def submit(index: int) -> tuple[np.ndarray, list[Future]]:
            row, rows = rows_of[index]
            values = buffers[index % 2][:, :rows]
            tasks = [
                pool.submit(_fill_band, product, *sources[band], band, taps, row, rows, out)
                for band, out in zip(BANDS, values)
            ]
            if elevation is not None:
                tasks.append(pool.submit(elevation.fill, row, rows, values[-1]))
            return values, tasks

        pending = submit(0)
        for index in tqdm(
            range(len(rows_of)), desc=f"preprocess {product.tile} {product.date}", unit="strip", disable=None
        ):
            values, tasks = pending
            if index + 1 < len(rows_of):
                pending = submit(index + 1)
            validity = [task.result() for task in tasks]
            valid = _combine_validity(validity[: len(BANDS)])
            if elevation is not None:
                covered = validity[-1]
                summary.dem_missing += covered.size - int(np.count_nonzero(covered))
                valid &= covered
            invalid = valid.size - int(np.count_nonzero(valid))
            if invalid:
                _set_no_data(values, valid)
            summary.valid += valid.size - invalid
            if summary.histograms:
                _count_values(values, invalid, summary.histograms)
            sink(values, rows_of[index][0])
            _release_freed_memory()
    return summary


def _fill_band(
    product: SafeProduct, source, lock: threading.Lock, band: str, taps: dict, row: int, rows: int, out: np.ndarray
) -> np.ndarray:
    """One band of a strip on the 10 m grid into `out` (int16, offset applied, saturated); returns its validity
    (`scene.product_band_valid`) on the band's own grid. Bands run in parallel threads: GDAL decoding and the
    numpy work release the GIL; the work arrays are the thread's own (snowcloud.resample.Scratch)."""
    k = RESOLUTION_M[band] // 10
    scratch = thread_scratch()
    offset = product.offsets[band]
    if k == 1:
        dn = _read_rows(product, source, lock, band, row, rows, scratch)
        _offset_dn(dn, offset, out, scratch)
        return product_band_valid(band, dn)
    first, count = row // k, rows // k
    top, bottom = max(0, first - MARGIN), min(source.height, first + count + MARGIN)
    dn = _read_rows(product, source, lock, band, top, bottom - top, scratch)
    before, after = top - (first - MARGIN), first + count + MARGIN - bottom
    native = scratch.array("native", (count + 2 * MARGIN, source.width + 2 * MARGIN))
    np.add(dn, np.float32(offset), out=native[before : before + dn.shape[0], MARGIN:-MARGIN])
    replicate_edges(native, before, after, MARGIN)
    valid = product_band_valid(band, dn)
    padded_valid = None if valid.all() else np.pad(valid, ((before, after), (MARGIN, MARGIN)), mode="edge")
    saturate = _may_saturate(max(-float(native.min()), float(native.max())) * gain(taps[k]))

    def store(first: int, values: np.ndarray) -> None:
        store_values(values, out[first : first + values.shape[0]], saturate)

    upsample(native, k, taps[k], padded_valid, ROWS_AT_ONCE // k, store)
    return valid[first - top : first - top + count]


def _offset_dn(dn: np.ndarray, offset: float, out: np.ndarray, scratch) -> None:
    """DN + offset of a 10 m band into int16 `out`, saturated: in int16 arithmetic (whose wrap-around is then
    exact) when the offset is an integer and no value can saturate, else through float32."""
    if float(offset).is_integer() and not _may_saturate(max(abs(offset), int(dn.max()) + offset)):
        np.add(dn.view(np.int16), np.int16(offset), out=out)
        return
    for first in range(0, dn.shape[0], ROWS_AT_ONCE):
        chunk = dn[first : first + ROWS_AT_ONCE]
        store_values(
            np.add(chunk, np.float32(offset), out=scratch.array(RESULT, chunk.shape)),
            out[first : first + chunk.shape[0]],
        )


def _may_saturate(magnitude: float) -> bool:
    """Can float32 values of at most this magnitude fall outside VALUE_RANGE once rounded? (1 of margin for
    the rounding errors of float32 arithmetic; VALUE_RANGE is symmetric)"""
    return magnitude > VALUE_RANGE[1] - 1


def _read_rows(
    product: SafeProduct, source, lock: threading.Lock, band: str, first: int, count: int, scratch
) -> np.ndarray:
    """Native rows [first, first + count) of a band, decoded into the thread's scratch space."""
    dn = scratch.array("dn", (count, source.width), np.uint16)
    try:
        with lock:
            source.read(1, window=Window(0, first, source.width, count), out=dn)
    except RasterioError as error:
        raise PreprocessError(f"cannot decode band {product.band_source(band)}: {error}") from error
    return dn


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), which hands the free pages inside malloc's arenas back to the system; a no-op
    where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


# After each strip: GDAL's JP2 blocks and codec buffers (1-4 MB, allocated and freed in several threads) leave
# free pages in malloc's arenas that stay resident otherwise (0.3 GB of a full tile's peak; no measurable cost).
_release_freed_memory = _malloc_trim()


def _set_no_data(values: np.ndarray, valid: np.ndarray) -> None:
    """NODATA in every band of int16 `values` where not `valid`, in two bitwise passes (a masked copy
    broadcast over the bands is several times slower)."""
    mask = valid.astype(np.int16)
    np.negative(mask, out=mask)  # all bits set where valid, none where not
    values &= mask
    np.invert(mask, out=mask)
    mask &= np.int16(NODATA)  # NODATA where not valid, 0 where valid
    values |= mask


def _combine_validity(band_valid: list[np.ndarray]) -> np.ndarray:
    """Where every band is valid, on the 10 m grid, from each band's validity on its own grid: the 60 m
    validity is folded into the 20 m one and that into the 10 m one (a coarse pixel covers k x k finer ones)."""
    by_factor: dict[int, np.ndarray] = {}
    for band, valid in zip(BANDS, band_valid):
        k = RESOLUTION_M[band] // 10
        if k in by_factor:
            by_factor[k] &= valid
        else:
            by_factor[k] = valid.copy()
    factors = sorted(by_factor, reverse=True)
    for coarse, fine in zip(factors, factors[1:]):
        ratio = coarse // fine
        rows, cols = by_factor[coarse].shape
        blocks = by_factor[fine].reshape(rows, ratio, cols, ratio)
        blocks &= by_factor[coarse][:, None, :, None]
    return by_factor[factors[-1]]


def _count_values(values: np.ndarray, invalid: int, histograms: dict[str, np.ndarray]) -> None:
    """Add each band's values to its histogram (bin = value + 32768); the invalid pixels, all -32768, are
    taken out of bin 0 again (valid values never reach -32768)."""
    for band, band_values in zip(BANDS, values):
        as_unsigned = band_values.view(np.uint16)  # 0..32767, then -32768..-1 as 32768..65535
        counts = np.roll(bincount_in_chunks(as_unsigned, HISTOGRAM_SIZE), HISTOGRAM_SIZE // 2)
        counts[0] -= invalid
        histograms[band] += counts


def _check_summary(product: SafeProduct, elevation: DemOnGrid | None, summary: StripSummary) -> None:
    if elevation is not None:
        elevation.check_coverage(summary.dem_missing / summary.pixels)
    if summary.valid == 0:
        reason = "" if elevation is None else " with DEM coverage"
        raise PreprocessError(
            f"{product.path}: no valid pixel{reason} (every pixel has DN 0 in some band other than B10): nothing to process"
        )


def clip_limits(histograms: dict[str, np.ndarray], clip: dict) -> dict[str, tuple[int, int]]:
    """Per-band (low, high) clip limits from exact histograms of the int16 values (index = value + 32768).

    percentile: the nearest-rank percentiles (numpy's "inverted_cdf"); sigma: mean -/+ n_sigma standard
    deviations, rounded inwards to integers. Empty for method none.
    """
    if clip["method"] == "none":
        return {}
    limits = {}
    values = np.arange(HISTOGRAM_SIZE, dtype=np.float64) + NODATA
    for band, counts in histograms.items():
        total = counts.sum()
        if clip["method"] == "percentile":
            cumulative = np.cumsum(counts)
            low, high = (int(values[np.searchsorted(cumulative, q / 100 * total)]) for q in clip["percentiles"])
        else:
            mean = float((counts * values).sum() / total)
            std = math.sqrt(float((counts * (values - mean) ** 2).sum() / total))
            low, high = math.ceil(mean - clip["n_sigma"] * std), math.floor(mean + clip["n_sigma"] * std)
        limits[band] = (max(low, VALUE_RANGE[0]), min(high, VALUE_RANGE[1]))
    return limits


class _TemporaryStrips(contextlib.AbstractContextManager):
    """The unclipped scene in an uncompressed, band-interleaved temporary GeoTIFF, removed on exit."""

    def __init__(self, path: Path, profile: dict) -> None:
        self.path = path
        self.dataset = rasterio.open(path, "w+", driver="GTiff", interleave="band", BIGTIFF="IF_SAFER", **profile)

    def write(self, values: np.ndarray, row: int) -> None:
        self.dataset.write(values, window=Window(0, row, values.shape[2], values.shape[1]))

    def __exit__(self, *error: object) -> None:
        self.dataset.close()
        self.path.unlink(missing_ok=True)


def _write_clipped(
    stack: _TemporaryStrips,
    limits: dict[str, tuple[int, int]],
    block_rows: int,
    sink: Callable[[np.ndarray, int], None],
) -> None:
    """With clipping: the strips read back, the valid values of the reflectance bands clipped, handed to `sink`."""
    low = np.array([limits[band][0] for band in BANDS], dtype=np.int16)[:, None, None]
    high = np.array([limits[band][1] for band in BANDS], dtype=np.int16)[:, None, None]
    dataset = stack.dataset
    buffer = np.empty((dataset.count, min(block_rows, dataset.height), dataset.width), dtype=np.int16)
    for row in range(0, dataset.height, block_rows):
        rows = min(block_rows, dataset.height - row)
        values = buffer if rows == buffer.shape[1] else np.empty((dataset.count, rows, dataset.width), dtype=np.int16)
        dataset.read(window=Window(0, row, dataset.width, rows), out=values)
        reflectance = values[: len(BANDS)]
        invalid = reflectance[0] == NODATA  # no data is the same in every band
        np.clip(reflectance, low, high, out=reflectance)
        np.copyto(reflectance, np.int16(NODATA), where=invalid)
        sink(values, row)
        _release_freed_memory()


def _describe(
    dataset, product: SafeProduct, elevation: DemOnGrid | None, options: dict, limits: dict, summary: StripSummary
) -> None:
    """Band names, scales and units, and the processing parameters as tags."""
    for index, name in enumerate(channel_names(elevation is not None), start=1):
        dataset.set_band_description(index, name)
    scale = 1 / product.quantification_value
    dataset.scales = [scale] * len(BANDS) + ([1.0] if elevation is not None else [])
    dataset.offsets = [0.0] * dataset.count
    dataset.units = ["reflectance"] * len(BANDS) + (["metre"] if elevation is not None else [])
    clip = {"method": options["clip"]["method"], "limits": {band: list(pair) for band, pair in limits.items()}}
    if clip["method"] == "percentile":
        clip["percentiles"] = options["clip"]["percentiles"]
    elif clip["method"] == "sigma":
        clip["n_sigma"] = options["clip"]["n_sigma"]
    dataset.update_tags(
        PRODUCT=product.name,
        TILE=product.tile,
        SENSING_TIME=product.date,
        PROCESSING_BASELINE=product.processing_baseline,
        QUANTIFICATION_VALUE=f"{product.quantification_value:g}",
        RADIO_ADD_OFFSET=json.dumps(product.offsets),
        VALUES="DN + RADIO_ADD_OFFSET (reflectance = value / QUANTIFICATION_VALUE), clipped per CLIP; ELEVATION in metres",
        RESAMPLING=json.dumps(
            {"method": options["resampling"], "cubic_a": options["cubic_a"], "alignment": "pixel centres"}
        ),
        CLIP=json.dumps(clip),
        DEM=elevation.path if elevation is not None else "none",
        DEM_RESAMPLING=options["dem_resampling"] if elevation is not None else "none",
        DEM_MISSING_FRACTION=f"{summary.dem_missing / summary.pixels:.6g}",
        VALID_FRACTION=f"{summary.valid / summary.pixels:.6g}",
        **{PREPROCESS_TAG: json.dumps(options, sort_keys=True)},
        SNOWCLOUD_VERSION=snowcloud.__version__,
    )
