"""Preprocess stage: one L1C product (+ DEM) -> the scene raster results/scenes/{tile}/{date}.tif.

The 13 bands on B02's 10 m grid (20 m / 60 m bands upsampled by snowcloud.resample), value = DN +
RADIO_ADD_OFFSET in a signed type, saturating at 32767, clipped per config; the DEM reprojected onto the
same grid as band 14 (ELEVATION, metres); nodata -32768 in every band wherever any band has DN 0 (or the DEM
is missing). The work is done in strips of `block_rows` 10 m rows, so memory does not grow with the tile:

1. read each band's window for the strip (plus a kernel margin) through GDAL (/vsizip/ for zips), upsample,
   offset, mask, and write the strip to an uncompressed temporary GeoTIFF beside the output; exact per-band
   histograms (np.bincount over the int16 values of valid pixels) are gathered on the way when clipping;
2. clipping (percentile / sigma) limits come from those histograms: statistics of the 10 m values of the
   whole scene, exact, and without decoding the JP2 files twice; the temporary file is clipped in place;
3. average overviews are made from it in numpy (snowcloud.cog), and GDAL's COG driver turns it into the
   tiled, compressed COG with those overviews, under a temporary name renamed to the output at the end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject
from rasterio.windows import Window
from tqdm import tqdm

import snowcloud
from snowcloud.atomic import atomic_output
from snowcloud.bands import BANDS, RESOLUTION_M, channel_names
from snowcloud.cog import write_cog
from snowcloud.config import load_schema, validate_config
from snowcloud.resample import MARGIN, pad_edges, phase_taps, upsample
from snowcloud.safe import SafeProduct, open_safe

log = logging.getLogger(__name__)

NODATA = -32768
VALUE_RANGE = (-32767, 32767)  # valid values saturate here; -32768 is reserved for no data
HISTOGRAM_SIZE = 65536  # one bin per int16 value
COG_BLOCK_SIZE = 512
ZSTD_LEVEL = 1  # 5x faster than GDAL's default 9 for ~10 % larger files (with the horizontal predictor)
# GDAL's block cache must hold the JP2 tiles a strip shares with the next one (one 1024-row tile row of all
# 13 bands of a full tile: 170 MB) beside the tiles being decoded, or they are decoded twice (256 MB is too
# little, 384 MB enough on a full tile; the margin is for the output and DEM). rasterio takes bytes.
GDAL_CACHE_BYTES = 512 * 2**20
COVERAGE_CHECK_PIXELS = 512  # the DEM pre-check samples the tile on a grid of about this many pixels a side


class PreprocessError(ValueError):
    """A scene that cannot be preprocessed; the message names the file and the problem."""


def preprocess_options(options: dict) -> dict:
    """The preprocess options with every default filled in, checked against config/schema.yaml."""
    schema = load_schema()
    section = {"type": "object", "properties": {"preprocess": schema["properties"]["preprocess"]}}
    return validate_config({"preprocess": copy.deepcopy(dict(options))}, section)["preprocess"]


def preprocess_scene(safe, dem: str | None, output, options: dict, threads: int = 1) -> None:
    """SAFE product (+ DEM) -> scene raster COG at `output` (see the module docstring)."""
    start = time.perf_counter()
    options = preprocess_options(options)
    product = open_safe(safe)
    if options["dem"] and not dem:
        raise PreprocessError(f"preprocess.dem is on but no DEM was given for {product.path}")
    gdal = rasterio.Env(GDAL_NUM_THREADS=str(threads), GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
    with gdal, contextlib.ExitStack() as resources:
        elevation = resources.enter_context(DemOnGrid(dem, product, options, threads)) if options["dem"] else None
        if elevation is not None:
            elevation.check_coverage_estimate()
        with atomic_output(output) as final:
            stack = final.with_name(f"{final.stem}.strips.tif")
            try:
                summary = _write_strips(product, elevation, stack, options, threads)
                _check_summary(product, elevation, summary)
                limits = clip_limits(summary.histograms, options["clip"])
                if limits:
                    _clip_in_place(stack, limits, options["block_rows"])
                with rasterio.open(stack, "r+") as dataset:
                    _describe(dataset, product, elevation, options, limits, summary)
                _write_cog(stack, final, options, threads)
            finally:
                stack.unlink(missing_ok=True)
    log.info(
        "%s -> %s: %.1f %% valid, %s clipping, %.1f s",
        product.name, output, 100 * summary.valid / summary.pixels, options["clip"]["method"], time.perf_counter() - start,
    )  # fmt: skip


@dataclass
class StripSummary:
    """What the strip pass learnt about the whole scene."""

    pixels: int = 0
    valid: int = 0
    dem_missing: int = 0
    histograms: dict[str, np.ndarray] = field(default_factory=dict)


class DemOnGrid(contextlib.AbstractContextManager):
    """A DEM of any CRS, reprojected strip by strip onto the scene's 10 m grid (NaN where it has no value)."""

    def __init__(self, path: str, product: SafeProduct, options: dict, threads: int) -> None:
        self.path, self.product, self.threads = str(path), product, threads
        self.resampling = Resampling[options["dem_resampling"]]
        self.allowed_missing = options["dem_max_missing_fraction"]
        try:
            self.dataset = rasterio.open(self.path)
        except RasterioError as error:
            raise PreprocessError(f"cannot read DEM {self.path}: {error}") from error
        if self.dataset.crs is None:
            self.dataset.close()
            raise PreprocessError(f"DEM {self.path} has no coordinate reference system")

    def __exit__(self, *error: object) -> None:
        self.dataset.close()

    def check_coverage_estimate(self) -> None:
        """Refuse a DEM that leaves too much of the tile uncovered, measured on a coarse grid: before the
        heavy work (the strip pass counts exactly and checks again)."""
        missing = self.missing_fraction_estimate()
        if missing > self.allowed_missing:
            raise PreprocessError(self.coverage_message(missing, estimate=True))

    def check_coverage(self, missing: float) -> None:
        if missing > self.allowed_missing:
            raise PreprocessError(self.coverage_message(missing))

    def reproject(self, transform: Affine, width: int, height: int, resampling: Resampling | None = None) -> np.ndarray:
        destination = np.full((height, width), np.nan, dtype=np.float32)
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

    def strip(self, row: int, rows: int) -> np.ndarray:
        transform = self.product.transform @ Affine.translation(0, row)
        return self.reproject(transform, self.product.width, rows)

    def missing_fraction_estimate(self) -> float:
        """Uncovered share of the tile on a coarse grid: fails a scene before the heavy work."""
        step = max(1, math.ceil(max(self.product.width, self.product.height) / COVERAGE_CHECK_PIXELS))
        coarse = self.reproject(
            self.product.transform @ Affine.scale(step),
            math.ceil(self.product.width / step),
            math.ceil(self.product.height / step),
            Resampling.nearest,
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


def _write_strips(product: SafeProduct, elevation: DemOnGrid | None, path: Path, options: dict, threads: int) -> StripSummary:
    """Pass 1: every strip of the scene into an uncompressed, pixel-interleaved temporary GeoTIFF."""
    names = channel_names(elevation is not None)
    block_rows = options["block_rows"]
    profile = dict(
        driver="GTiff", width=product.width, height=product.height, count=len(names), dtype="int16", nodata=NODATA,
        crs=product.crs, transform=product.transform, interleave="pixel", tiled=False, blockysize=6, BIGTIFF="IF_SAFER",
    )  # fmt: skip
    taps = {k: phase_taps(k, options["resampling"], options["cubic_a"]) for k in (2, 6)}
    want_histograms = options["clip"]["method"] != "none"
    summary = StripSummary(pixels=product.width * product.height)
    if want_histograms:
        summary.histograms = {band: np.zeros(HISTOGRAM_SIZE, dtype=np.int64) for band in BANDS}
    buffer = np.empty((len(names), min(block_rows, product.height), product.width), dtype=np.int16)
    with contextlib.ExitStack() as stack:
        sources = {band: stack.enter_context(rasterio.open(product.band_paths[band])) for band in BANDS}
        out = stack.enter_context(rasterio.open(path, "w", **profile))
        pool = stack.enter_context(ThreadPoolExecutor(threads))
        strips = range(0, product.height, block_rows)
        for row in tqdm(strips, desc=f"preprocess {product.tile} {product.date}", unit="strip", disable=None):
            rows = min(block_rows, product.height - row)
            values = buffer[:, :rows]
            valid = np.ones((rows, product.width), dtype=bool)
            for band_valid in pool.map(lambda index: _fill_band(product, sources, taps, row, rows, index, values[index]), range(len(BANDS))):
                valid &= band_valid
            if elevation is not None:
                heights = elevation.strip(row, rows)
                covered = ~np.isnan(heights)
                summary.dem_missing += int((~covered).sum())
                valid &= covered
                values[-1] = np.clip(np.rint(np.nan_to_num(heights)), *VALUE_RANGE)
            np.copyto(values, np.int16(NODATA), where=~valid)
            summary.valid += int(valid.sum())
            if want_histograms:
                _count_values(values, int((~valid).sum()), summary.histograms)
            out.write(values, window=Window(0, row, product.width, rows))
    return summary


def _fill_band(product: SafeProduct, sources: dict, taps: dict, row: int, rows: int, index: int, out: np.ndarray) -> np.ndarray:
    """One band of a strip on the 10 m grid into `out` (int16, offset applied, saturated); returns where it is
    valid. Bands run in parallel threads: GDAL decoding and the numpy work release the GIL."""
    band = BANDS[index]
    k = RESOLUTION_M[band] // 10
    dn, valid = _read_band(product, sources[band], band, row // k, rows // k, margin=MARGIN if k > 1 else 0)
    if k == 1:
        values = dn.astype(np.int32)
    else:
        values = np.rint(upsample(dn, valid, k, taps[k]))
        valid = np.repeat(np.repeat(valid[MARGIN:-MARGIN, MARGIN:-MARGIN], k, axis=0), k, axis=1)
    values += product.offsets[band]
    np.clip(values, *VALUE_RANGE, out=values)
    out[...] = values
    return valid


def _read_band(product: SafeProduct, source, band: str, first: int, count: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Native rows [first - margin, first + count + margin) of a band, edges replicated beyond the raster, and
    their validity (DN > 0)."""
    top = max(0, first - margin)
    bottom = min(source.height, first + count + margin)
    try:
        dn = source.read(1, window=Window(0, top, source.width, bottom - top))
    except RasterioError as error:
        raise PreprocessError(f"cannot decode band {product.band_source(band)}: {error}") from error
    if margin:
        dn = pad_edges(dn, top - (first - margin), first + count + margin - bottom, margin)
    return dn, dn > 0


def _count_values(values: np.ndarray, invalid: int, histograms: dict[str, np.ndarray]) -> None:
    """Add each band's values to its histogram (bin = value + 32768); the invalid pixels, all -32768, are
    taken out of bin 0 again (valid values never reach -32768)."""
    for band, band_values in zip(BANDS, values):
        counts = np.bincount((band_values.view(np.uint16) ^ 0x8000).ravel(), minlength=HISTOGRAM_SIZE)
        counts[0] -= invalid
        histograms[band] += counts


def _check_summary(product: SafeProduct, elevation: DemOnGrid | None, summary: StripSummary) -> None:
    if elevation is not None:
        elevation.check_coverage(summary.dem_missing / summary.pixels)
    if summary.valid == 0:
        reason = "" if elevation is None else " with DEM coverage"
        raise PreprocessError(f"{product.path}: no valid pixel{reason} (every pixel has DN 0 in some band): nothing to process")


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


def _clip_in_place(path: Path, limits: dict[str, tuple[int, int]], block_rows: int) -> None:
    """Pass 2: clip the valid values of the reflectance bands of the temporary file, strip by strip."""
    low = np.array([limits[band][0] for band in BANDS], dtype=np.int16)[:, None, None]
    high = np.array([limits[band][1] for band in BANDS], dtype=np.int16)[:, None, None]
    indexes = list(range(1, len(BANDS) + 1))
    with rasterio.open(path, "r+") as dataset:
        for row in range(0, dataset.height, block_rows):
            window = Window(0, row, dataset.width, min(block_rows, dataset.height - row))
            values = dataset.read(indexes, window=window)
            invalid = values[0] == NODATA  # no data is the same in every band
            np.clip(values, low, high, out=values)
            np.copyto(values, np.int16(NODATA), where=invalid)
            dataset.write(values, indexes=indexes, window=window)


def _describe(dataset, product: SafeProduct, elevation: DemOnGrid | None, options: dict, limits: dict, summary: StripSummary) -> None:
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
        RESAMPLING=json.dumps({"method": options["resampling"], "cubic_a": options["cubic_a"], "alignment": "pixel centres"}),
        CLIP=json.dumps(clip),
        DEM=elevation.path if elevation is not None else "none",
        DEM_RESAMPLING=options["dem_resampling"] if elevation is not None else "none",
        DEM_MISSING_FRACTION=f"{summary.dem_missing / summary.pixels:.6g}",
        VALID_FRACTION=f"{summary.valid / summary.pixels:.6g}",
        PREPROCESS_OPTIONS=json.dumps(options, sort_keys=True),
        SNOWCLOUD_VERSION=snowcloud.__version__,
    )


def _write_cog(source: Path, target: Path, options: dict, threads: int) -> None:
    """Pass 3: the temporary GeoTIFF as a tiled, compressed Cloud Optimized GeoTIFF (average overviews)."""
    creation = dict(COMPRESS=options["compress"].upper(), PREDICTOR="YES", BLOCKSIZE=COG_BLOCK_SIZE, BIGTIFF="IF_SAFER")
    if options["compress"] == "zstd":
        creation["LEVEL"] = ZSTD_LEVEL
    write_cog(source, target, NODATA, options["overviews"], threads, **creation)
