"""Synthetic inputs of the benchmarks, in the real formats: a scene raster of any size (14 bands + ELEVATION,
int16, with a no-data swath edge) and a dataset of real shards built from such scenes by the shard stage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from snowcloud.bands import BANDS, ELEVATION
from snowcloud.config import validated
from snowcloud.dataset_stats import build_dataset_stats
from snowcloud.labels import IGNORE_INDEX
from snowcloud.scene import NODATA
from snowcloud.shards import build_shard

STRIP = 256


def scene_strip(top: int, height: int, width: int, noise: np.ndarray) -> np.ndarray:
    """Rows top..top+height: bright 'snow/cloud' blobs over dark ground, a DEM ramp, the last 5 % of the columns
    without data (as at a swath edge); `noise` (bands, >= height, width) is added to the bands."""
    yy, xx = np.mgrid[top : top + height, 0:width].astype(np.float32) / 300
    bright = np.sin(yy) + np.cos(0.7 * xx) > 0.5
    band_gain = (1 + 0.3 * np.sin(np.arange(len(BANDS)) / 2)).astype(np.float32)[:, None, None]
    dn = np.where(bright, np.float32(8000), np.float32(900))[None] * band_gain + noise[:, :height]
    values = np.concatenate([dn, (800 + 20 * yy + 10 * xx)[None]]).astype(np.int16)
    values[:, :, int(0.95 * width) :] = NODATA
    return values


def write_scene(path: Path, rows: int, width: int, seed: int = 0) -> Path:
    """A synthetic scene raster written strip by strip, tiled and compressed as the preprocess stage writes
    them (512² tiles, zstd level 1, horizontal predictor); bounded memory; one noise block for every strip, and
    GDAL compressing on all CPUs, so that a full 10980² tile takes seconds to make, not minutes."""
    noise = np.random.default_rng(seed).normal(0, 200, (len(BANDS), STRIP, width)).astype(np.float32)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": rows,
        "count": len(BANDS) + 1,
        "dtype": "int16",
        "nodata": NODATA,
        "crs": "EPSG:32632",
        "transform": rasterio.transform.from_origin(600000, 5200020, 10, 10),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "zstd",
        "zstd_level": 1,
        "predictor": 2,
        "bigtiff": "IF_SAFER",
        "num_threads": "all_cpus",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate([*BANDS, ELEVATION], start=1):
            dst.set_band_description(i, name)
        for top in range(0, rows, STRIP):
            height = min(STRIP, rows - top)
            dst.write(scene_strip(top, height, width, noise), window=Window(0, top, width, height))
    return path


def write_label(path: Path, scene: Path) -> Path:
    """A label on the scene's grid: snow on the bright blobs, cloud on a band of them, water in a strip, background
    elsewhere; unlabelled where the scene has no data."""
    with rasterio.open(scene) as src:
        profile, first_band = src.profile, src.read(1)
    bright, nodata = first_band > 4000, first_band == NODATA
    rows, cols = np.mgrid[0 : bright.shape[0], 0 : bright.shape[1]]
    label = np.where(bright, np.where(rows % 600 < 200, 2, 1), 0).astype(np.uint8)
    label[(cols % 700 < 40) & ~bright] = 3
    label[nodata] = IGNORE_INDEX
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **{**profile, "count": 1, "dtype": "uint8", "nodata": IGNORE_INDEX}) as dst:
        dst.write(label, 1)
    return path


def write_dataset(root: Path, dates: int, patches_per_date: int, patch_size: int = 256, size: int = 2048) -> Path:
    """`dates` scenes of `size`² -> real shards of `patches_per_date` patches (the shard stage) and their
    stats.json (the last date validates); returns the stats path."""
    options = validated(
        {
            "patch_size": patch_size,
            "sampler": {"patches_per_date": patches_per_date, "min_labelled_fraction": 0.5},
            "split": {"validation_dates": []},
        },
        "dataset",
    )
    names = [f"202201{day:02d}T102209" for day in range(1, dates + 1)]
    options["split"]["validation_dates"] = names[-1:]
    shards = []
    for seed, date in enumerate(names):
        scene = write_scene(root / "scenes" / "32TNS" / f"{date}.tif", size, size, seed=seed)
        label = write_label(root / "labels" / "32TNS" / f"{date}.tif", scene)
        shards.append(root / "shards" / "32TNS" / f"{date}.h5")
        build_shard(scene, label, shards[-1], "bench", options)
        os.remove(scene)
    stats = root / "stats.json"
    build_dataset_stats([str(s) for s in shards], stats, root / "class_distribution.png", "bench", options)
    return stats
