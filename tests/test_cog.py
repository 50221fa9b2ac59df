"""The streaming COG writer (snowcloud.cog): the same image and pyramid for any strips, GDAL's COG layout,
average overviews, BigTIFF, every tile written once and whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers.references import assert_valid_cog

from snowcloud import cog
from snowcloud.cog import CogWriter, average_2x2
from snowcloud.scene import NODATA


def int16_profile(width: int, height: int, count: int, origin: tuple[float, float] = (0, 0)) -> dict:
    """The profile a CogWriter takes: an int16 image with NODATA on a 10 m UTM grid."""
    transform = Affine(10, 0, origin[0], 0, -10, origin[1])
    return dict(
        width=width, height=height, count=count, dtype="int16", nodata=NODATA, crs="EPSG:32632", transform=transform
    )


def test_average_overviews_match_gdal_and_skip_no_data():
    values = np.array([[[1, 2, 5, NODATA, 7], [3, 4, 6, 8, 9], [NODATA, NODATA, 10, 11, 12]]], dtype=np.int16)
    mean = average_2x2(values, NODATA)
    # 2 x 2 blocks: (1+2+3+4)/4 = 2.5 -> 3; (5+6+8)/3 = 6.33 -> 6; (7+9)/2 = 8; bottom row: none; (10+11)/2; 12.
    np.testing.assert_array_equal(mean, [[[3, 6, 8], [NODATA, 11, 12]]])


@pytest.mark.parametrize(("strip", "height", "width"), [(100, 1300, 1100), (7, 1025, 1537), (1300, 1300, 513)])
def test_cog_writer_gives_the_same_image_and_pyramid_for_any_strips(tmp_path, strip, height, width):
    rng = np.random.default_rng(strip)
    image = rng.integers(-3000, 12000, (3, height, width)).astype(np.int16)
    image[:, 100:300, 200:333] = NODATA  # no-data blocks with odd edges
    image[:, :, -1] = NODATA
    profile = int16_profile(width, height, 3, origin=(499980, 5200020))
    target = tmp_path / "image.tif"
    with CogWriter(target, profile, True, threads=2, compress="zstd", predictor=2, zstd_level=1) as writer:
        for row in range(0, height, strip):
            writer.write(image[:, row : row + strip], row)
        writer.finish(lambda dataset: (dataset.update_tags(WHAT="test"), dataset.set_band_description(2, "second")))
    assert [p.name for p in tmp_path.iterdir()] == ["image.tif"]
    assert_valid_cog(target)
    with rasterio.open(target) as cog_file:
        np.testing.assert_array_equal(cog_file.read(), image)
        assert cog_file.tags()["WHAT"] == "test" and cog_file.descriptions == (None, "second", None)
        assert (cog_file.crs, cog_file.transform, cog_file.nodata) == (profile["crs"], profile["transform"], NODATA)
        factors = cog_file.overviews(1)
    level = image
    for index, factor in enumerate(factors):
        level = average_2x2(level, NODATA).copy()
        with rasterio.open(target, overview_level=index) as overview:
            np.testing.assert_array_equal(overview.read(), level, err_msg=f"overview {factor}")
    assert max(level.shape[1:]) <= 512 < max(level.shape[1:]) * 2


def test_cog_beyond_4_gb_is_a_bigtiff(tmp_path, monkeypatch):
    monkeypatch.setattr(cog, "CLASSIC_LIMIT", 1000)  # as if the file did not fit a classic TIFF
    image = np.arange(3 * 700 * 600, dtype=np.int32).reshape(3, 700, 600).astype(np.int16)
    profile = int16_profile(600, 700, 3)
    with CogWriter(tmp_path / "big.tif", profile, True, compress="deflate") as writer:
        writer.write(image, 0)
        writer.finish()
    assert (tmp_path / "big.tif").read_bytes()[2:4] == b"+\x00"  # 43: BigTIFF
    assert_valid_cog(tmp_path / "big.tif")
    with rasterio.open(tmp_path / "big.tif") as big:
        np.testing.assert_array_equal(big.read(), image)
        assert big.compression.name == "deflate" and big.overviews(1) == [2]


def test_cog_writer_refuses_strips_out_of_order_and_an_unfinished_image(tmp_path):
    profile = int16_profile(10, 20, 1)
    with CogWriter(tmp_path / "x.tif", profile, False) as writer:
        writer.write(np.zeros((1, 5, 10), dtype=np.int16), 0)
        with pytest.raises(ValueError, match="strip at row 10, expected row 5"):
            writer.write(np.zeros((1, 5, 10), dtype=np.int16), 10)
        with pytest.raises(ValueError, match="5 of 20 rows written"):
            writer.finish()
    assert list(tmp_path.iterdir()) == []


def test_cog_writer_writes_every_tile_once_even_with_a_tiny_block_cache(tmp_path, monkeypatch):
    """Strips end inside a band of tiles, and the cache holds one band's row of tiles (1.5 MB) but not all
    bands' (4.5 MB), as in a full tile where the JP2 tiles fill it: a tile written half filled would be
    flushed, read back and written again, leaving dead bytes in the part files."""
    rng = np.random.default_rng(5)
    image = rng.integers(-30000, 30000, (3, 1100, 1030)).astype(np.int16)  # incompressible: tiles of ~512 KB
    profile = int16_profile(1030, 1100, 3)
    dead_bytes = []

    def measure_then_assemble(template, levels, target):
        for part in (part for parts in levels for part in parts):
            ifd = cog.read_ifd(part)
            dead_bytes.append(part.stat().st_size - int(ifd.numbers(cog.TILE_BYTE_COUNTS).sum()))
        return assemble(template, levels, target)

    assemble = cog.assemble_cog
    monkeypatch.setattr(cog, "assemble_cog", measure_then_assemble)
    with (
        rasterio.Env(GDAL_CACHEMAX=5 * 2**19),
        CogWriter(tmp_path / "x.tif", profile, True, compress="zstd", predictor=2) as writer,
    ):
        for row in range(0, 1100, 100):
            writer.write(image[:, row : row + 100], row)
        writer.finish()
    assert len(dead_bytes) == 3 + 2 + 1 and max(dead_bytes) < 4096  # headers and tags only
    with rasterio.open(tmp_path / "x.tif") as written:
        np.testing.assert_array_equal(written.read(), image)


def test_cog_writer_writes_each_band_of_a_part_in_one_call_over_whole_tiles(tmp_path, monkeypatch):
    """A tile written in two calls can be flushed half filled from GDAL's block cache (other threads decode
    JP2 tiles into it) and come back empty: seen as zeroed rows at the top of a part of a full tile."""
    image = np.random.default_rng(6).integers(-3000, 12000, (2, 1100, 700)).astype(np.int16)
    profile = int16_profile(700, 1100, 2)
    calls = []
    write = rasterio.io.DatasetWriter.write

    def record(dataset, values, indexes=None, window=None, **kwargs):
        calls.append((Path(dataset.name).name, indexes, window))
        return write(dataset, values, indexes, window, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", record)
    with CogWriter(tmp_path / "x.tif", profile, True, threads=2, compress="zstd") as writer:
        for row in range(0, 1100, 102):  # strips that end inside bands of tiles
            writer.write(image[:, row : row + 102], row)
        writer.finish()
    parts = sorted({name for name, _, _ in calls})
    assert len(parts) == 3 + 2 + 1  # level 0: 3 parts, level 1 (550 rows): 2, level 2 (275 rows): 1
    assert sorted(calls, key=str) == sorted(((name, [band], None) for name in parts for band in (1, 2)), key=str)
    with rasterio.open(tmp_path / "x.tif") as written:
        np.testing.assert_array_equal(written.read(), image)
