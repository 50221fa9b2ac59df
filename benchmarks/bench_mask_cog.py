"""Seconds GDAL's COG driver (`snowcloud.mask.write_cog`, what the mask and probabilities are written with) takes
for a full tile's mask (1 band, MODE overviews) and probabilities (4 bands, AVERAGE overviews).

    python benchmarks/bench_mask_cog.py [--size 10980]

The mask is classes in 64 px blocks with a no-data strip at the swath edge; the plain GeoTIFFs are written first
(as `mask.write_prediction` does while the network runs) and only the copies to COG are timed: wall and CPU
seconds (all threads), and the same copy without overviews (`OVERVIEWS=NONE`), so that the overviews' own
share of this extra pass shows. Compare the seconds with a prediction's (docs/inference.md) to see what a
streaming writer like `cog.CogWriter` could save. About 0.6 GB of memory and of temporary disk for a full tile.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin

from snowcloud.labels import IGNORE_INDEX
from snowcloud.mask import write_cog

CLASSES = 4
BLOCK = 64  # px of one class block


def synthetic_mask(size: int) -> np.ndarray:
    """Classes 0..3 in BLOCK px squares, the first 5 % of the columns no data."""
    coarse = np.random.default_rng(0).integers(0, CLASSES, (size // BLOCK + 1,) * 2, dtype=np.uint8)
    mask = np.kron(coarse, np.ones((BLOCK, BLOCK), np.uint8))[:size, :size]
    mask[:, : size // 20] = IGNORE_INDEX
    return mask


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_copy(plain: Path, output: Path, resampling: str) -> str:
    """Wall and CPU seconds of write_cog, and of the same COG copy without overviews."""
    start, cpu = time.perf_counter(), cpu_seconds()
    write_cog(plain, output, resampling)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    bare = output.with_name(f"bare_{output.name}")
    start, bare_cpu = time.perf_counter(), cpu_seconds()
    rasterio.shutil.copy(
        plain, bare, driver="COG", compress="ZSTD", blocksize=512, overviews="NONE", bigtiff="IF_SAFER"
    )
    bare_seconds, bare_cpu = time.perf_counter() - start, cpu_seconds() - bare_cpu
    return f"{seconds:.1f} s ({cpu:.1f} s CPU); without overviews {bare_seconds:.1f} s ({bare_cpu:.1f} s CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10980, help="pixels a side (default: a full tile)")
    args = parser.parse_args()
    mask = synthetic_mask(args.size)
    profile = {
        "driver": "GTiff",
        "width": args.size,
        "height": args.size,
        "crs": "EPSG:32632",
        "transform": from_origin(500000, 5200020, 10, 10),
        "dtype": "uint8",
        "tiled": False,
    }
    with tempfile.TemporaryDirectory() as folder:
        plain_mask, plain_proba = Path(folder) / "mask.tif", Path(folder) / "proba.tif"
        with rasterio.open(plain_mask, "w", **profile, count=1, nodata=IGNORE_INDEX) as out:
            out.write(mask, 1)
        with rasterio.open(plain_proba, "w", **profile, count=CLASSES) as out:
            for band in range(CLASSES):
                out.write(np.where(mask == band, 230, 8).astype(np.uint8), band + 1)
        mask_seconds = timed_copy(plain_mask, Path(folder) / "mask_cog.tif", "MODE")
        proba_seconds = timed_copy(plain_proba, Path(folder) / "proba_cog.tif", "AVERAGE")
    print(f"{args.size} x {args.size} px, load {os.getloadavg()[0]:.1f}:")
    print(f"  mask COG (MODE overviews): {mask_seconds}")
    print(f"  probabilities COG ({CLASSES} bands, AVERAGE overviews): {proba_seconds}")


if __name__ == "__main__":
    main()
