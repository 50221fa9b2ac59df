"""The scene raster format: checks of an opened raster, band lookup, validity, strips, grids and identity."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers.rasters import CRS, TRANSFORM, synthetic_scene, write_scene

from snowcloud import scene
from snowcloud.bands import BANDS, ELEVATION
from snowcloud.scene import NODATA, SceneError


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_check_scene_accepts_the_format_and_names_what_is_wrong(tmp_path, rng):
    with rasterio.open(write_scene(tmp_path / "s13.tif", synthetic_scene(rng, 8, 8, elevation=False))) as src:
        assert scene.check_scene(src, elevation=False, source="s13") == list(BANDS)
        with pytest.raises(SceneError, match="s13: elevation is requested but the scene has no ELEVATION"):
            scene.check_scene(src, elevation=True, source="s13")
    with rasterio.open(write_scene(tmp_path / "s14.tif", synthetic_scene(rng, 8, 8))) as src:
        assert scene.check_scene(src, elevation=True, source="s14") == [*BANDS, ELEVATION]
        assert scene.check_scene(src, elevation=False, source="s14") == list(BANDS)
    bad = tmp_path / "float.tif"
    with rasterio.open(
        bad, "w", driver="GTiff", dtype="float32", count=13, height=4, width=4, crs=CRS, transform=TRANSFORM
    ) as dst:
        dst.write(np.zeros((13, 4, 4), np.float32))
    with rasterio.open(bad) as src, pytest.raises(SceneError, match="float.tif: not a scene raster"):
        scene.check_scene(src, elevation=False, source=str(bad))


def test_bands_are_found_by_name_and_a_missing_band_names_scene_and_user(tmp_path, rng):
    path = write_scene(tmp_path / "s13.tif", synthetic_scene(rng, 8, 8, elevation=False))
    with rasterio.open(path) as src:
        assert scene.band_indexes(src, ("B11", "B02"), "the test") == [12, 2]
        with pytest.raises(SceneError, match=r"s13\.tif lacks band\(s\) ELEVATION that the model m\.pt needs"):
            scene.band_indexes(src, ("B02", ELEVATION), "the model m.pt")


def test_a_pixel_is_valid_where_every_band_holds_data(tmp_path, rng):
    values = synthetic_scene(rng, 20, 12)
    values[3, 5, 6] = NODATA  # one band without data is enough
    values[:, 0, :] = NODATA
    with rasterio.open(write_scene(tmp_path / "scene.tif", values)) as src:
        mask = scene.valid_mask(src, 14)
        bands, valid = scene.read_bands(src, ("B04", "B02"), rasterio.windows.Window(0, 0, 12, 20), "the test")
    expected = np.all(values != NODATA, axis=0)
    np.testing.assert_array_equal(mask, expected)
    assert not mask[5, 6] and mask[5, 7] and not mask[0].any()
    np.testing.assert_array_equal(bands["B02"], values[1])
    assert not valid[5, 6] and not valid[0].any()  # band index 3 is B04
    assert not scene.valid_pixels(values[3:4])[5, 6]


def test_block_strips_cover_the_rows_cut_at_block_rows(tmp_path, rng):
    path = write_scene(tmp_path / "scene.tif", synthetic_scene(rng, 150, 20))  # 64-row blocks
    with rasterio.open(path) as src:
        whole = [(w.row_off, w.height, w.width) for w in scene.block_strips(src)]
        part = [(w.row_off, w.height) for w in scene.block_strips(src, 10, 130)]
    assert whole == [(0, 64, 20), (64, 64, 20), (128, 22, 20)]
    assert part == [(10, 54), (64, 64), (128, 2)]
    assert [(w.row_off, w.height) for w in scene.row_strips(150, 20, 64)] == [(0, 64), (64, 64), (128, 22)]
    assert list(scene.sub_strips(70, 32)) == [slice(0, 32), slice(32, 64), slice(64, 70)]


def test_rasters_on_another_grid_are_named(tmp_path, rng):
    values = synthetic_scene(rng, 16, 16)
    first = write_scene(tmp_path / "a.tif", values)
    same = write_scene(tmp_path / "b.tif", values)
    shifted = write_scene(tmp_path / "c.tif", values, transform=TRANSFORM @ Affine.translation(1, 0))
    with rasterio.open(first) as a, rasterio.open(same) as b, rasterio.open(shifted) as c:
        scene.check_same_grid(a, b)
        with pytest.raises(SceneError, match=r"a\.tif .* and .*c\.tif .* are not on the same grid"):
            scene.check_same_grid(a, c)


def test_identity_is_read_from_the_path():
    assert scene.identity("results/scenes/32TNS/20220201T102209.tif") == ("32TNS", "20220201T102209")
    with pytest.raises(SceneError, match="not a scene raster path"):
        scene.identity("results/scenes/20220201T102209.tif")


def test_the_profile_is_what_the_format_says():
    profile = scene.profile(30, 20, True, CRS, TRANSFORM)
    assert (profile["count"], profile["dtype"], profile["nodata"]) == (14, "int16", NODATA)
    assert scene.profile(30, 20, False, CRS, TRANSFORM)["count"] == 13
