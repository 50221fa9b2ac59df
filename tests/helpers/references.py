"""Reference implementations and validators the tests compare the package against: upsampling straight from its
definition, and GDAL's cloud-optimised GeoTIFF rules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio

from snowcloud.resample import cubic_weight


def assert_valid_cog(path: Path) -> None:
    """The checks of GDAL's validate_cloud_optimized_geotiff.py with --full-check, on GDAL's own view of the
    file's structure: the IFDs of the image and its overviews (largest first) right after the header and its
    ghost area, tiles everywhere, tile data from the smallest overview to the full resolution, each band's
    tiles in row-major order, each tile with its size leader and its repeated last 4 bytes."""
    raw = path.read_bytes()
    with rasterio.open(path) as dataset:
        assert dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        ghost = dataset.get_tag_item("GDAL_STRUCTURAL_METADATA", "TIFF")
        levels = [None, *range(len(dataset.overviews(1)))]
        ifds = [int(dataset.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=level)) for level in levels]
        header = 16 if raw[2] == 43 else 8  # BigTIFF or classic TIFF
        assert ifds[0] == header + len(ghost) + (header + len(ghost)) % 2 and ifds == sorted(ifds)
        first_tiles = []
        for level in levels:
            with rasterio.open(path, overview_level=level) if level is not None else rasterio.open(path) as image:
                rows, cols = (math.ceil(n / 512) for n in image.shape)
                assert image.block_shapes[0] == (512, 512)
            for band in dataset.indexes:
                last = 0
                for y in range(rows):
                    for x in range(cols):
                        offset = int(dataset.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band, ovr=level))
                        size = int(dataset.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band, ovr=level))
                        assert offset > last and int.from_bytes(raw[offset - 4 : offset], "little") == size
                        assert raw[offset + size - 4 : offset + size] == raw[offset + size : offset + size + 4]
                        last = offset
                        if (band, x, y) == (1, 0, 0):
                            first_tiles.append(offset)
        assert first_tiles[-1] > ifds[-1] and first_tiles == sorted(first_tiles, reverse=True)


def reference_upsample(native: np.ndarray, k: int, method: str, a: float = -0.5) -> np.ndarray:
    """Pixel by pixel, straight from the definition: output j samples the native band at (j + 0.5) / k - 0.5,
    with the border pixel replicated beyond the edges."""

    def weights(j: int) -> dict[int, float]:
        s = (j + 0.5) / k - 0.5
        if method == "nearest":
            return {round(s): 1.0}
        base = math.floor(s)
        if method == "bilinear":
            return {base: 1 - (s - base), base + 1: s - base}
        return {base + d: cubic_weight(s - (base + d), a) for d in (-1, 0, 1, 2)}

    n = native.shape[0]
    clamp = lambda i: min(max(i, 0), n - 1)  # noqa: E731
    out = np.zeros((n * k, n * k))
    for r in range(n * k):
        for c in range(n * k):
            out[r, c] = sum(
                wr * wc * native[clamp(i), clamp(j)] for i, wr in weights(r).items() for j, wc in weights(c).items()
            )
    return np.rint(out)
