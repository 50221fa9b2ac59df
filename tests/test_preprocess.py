import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from helpers.references import assert_valid_cog, reference_upsample
from helpers.safe_factory import band_shape, constant_bands, make_product
from rasterio.enums import Resampling
from rasterio.warp import transform, transform_bounds

from snowcloud import cog, config, preprocess, resample
from snowcloud.bands import BANDS, RESOLUTION_M
from snowcloud.cog import CogWriter
from snowcloud.config import ConfigError, validated
from snowcloud.dem import DemError
from snowcloud.demo.landscape import Landscape
from snowcloud.demo.tiles import tile_grid
from snowcloud.preprocess import PreprocessError, preprocess_scene
from snowcloud.safe import SafeError, open_safe
from snowcloud.scene import NODATA

NO_DEM = {"dem": False}


def run(safe, output: Path, dem_path=None, threads=1, **options) -> tuple[np.ndarray, dict]:
    preprocess_scene(safe, dem_path, output, options, threads=threads)
    with rasterio.open(output) as scene:
        return scene.read(), scene.tags()


def random_bands(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {band: rng.integers(500, 9000, band_shape(band, size)).astype(np.uint16) for band in BANDS}


@pytest.mark.parametrize(("method", "a"), [("nearest", -0.5), ("bilinear", -0.5), ("cubic", -0.5), ("cubic", -0.75)])
def test_every_band_lands_on_the_10m_grid_as_computed_by_hand(tmp_path, method, a):
    dn = random_bands(12)
    safe = make_product(tmp_path, dn, baseline="0301")
    values, tags = run(safe, tmp_path / "scene.tif", resampling=method, cubic_a=a, **NO_DEM)
    assert values.shape == (13, 12, 12)
    for index, band in enumerate(BANDS):
        k = RESOLUTION_M[band] // 10
        expected = np.clip(reference_upsample(dn[band].astype(float), k, method, a), -32767, 32767)
        np.testing.assert_allclose(values[index], expected, atol=1, err_msg=band)  # float32 vs float64 rounding
        assert np.mean(values[index] == expected) > 0.95
    assert json.loads(tags["RESAMPLING"]) == {"method": method, "cubic_a": a, "alignment": "pixel centres"}


def test_hand_numbers_for_a_60m_band(tmp_path):
    dn = constant_bands(12)
    dn["B09"] = np.array([[1000, 2000], [3000, 4000]], dtype=np.uint16)
    safe = make_product(tmp_path, dn, baseline="0301")
    nearest, _ = run(safe, tmp_path / "nearest.tif", resampling="nearest", **NO_DEM)
    b09 = BANDS.index("B09")
    assert (
        (nearest[b09, :6, :6] == 1000).all()
        and (nearest[b09, 6:, :6] == 3000).all()
        and (nearest[b09, 6:, 6:] == 4000).all()
    )
    bilinear, _ = run(safe, tmp_path / "bilinear.tif", resampling="bilinear", **NO_DEM)
    # Pixel (0, 0) samples native (-5/12, -5/12): beyond the edge, so the corner value.
    assert bilinear[b09, 0, 0] == 1000
    # Pixel (5, 5) samples native (5/12, 5/12): (49 * 1000 + 35 * 2000 + 35 * 3000 + 25 * 4000) / 144 = 2250.
    assert bilinear[b09, 5, 5] == 2250
    # Pixel (6, 0) samples row 7/12: (5 * 1000 + 7 * 3000) / 12 = 2166.67.
    assert bilinear[b09, 6, 0] == 2167


def test_interior_matches_gdal_cubic_and_bilinear(tmp_path):
    """GDAL's cubic (Keys, a = -0.5) and bilinear upsampling agree with ours away from the edges."""
    dn = random_bands(60, seed=1)
    for band in BANDS:  # smooth fields, as images are
        y, x = np.mgrid[0 : dn[band].shape[0], 0 : dn[band].shape[1]]
        dn[band] = (3000 + 1500 * np.sin(x / 3.0) * np.cos(y / 4.0)).astype(np.uint16)
    safe = make_product(tmp_path, dn, baseline="0301")
    for method in ("cubic", "bilinear"):
        values, _ = run(safe, tmp_path / f"{method}.tif", resampling=method, **NO_DEM)
        for band in ("B05", "B09"):
            k = RESOLUTION_M[band] // 10
            with rasterio.open(next(p for p in _band_paths(safe) if p.endswith(f"_{band}.jp2"))) as source:
                gdal = source.read(1, out_shape=(60, 60), resampling=Resampling[method]).astype(int)
            inner = slice(3 * k, 60 - 3 * k)
            assert np.abs(values[BANDS.index(band), inner, inner] - gdal[inner, inner]).max() <= 1


def _band_paths(safe: Path) -> list[str]:
    return [f"/vsizip/{safe}/{name}" for name in zipfile.ZipFile(safe).namelist() if name.endswith(".jp2")]


def test_offsets_of_both_baselines_give_the_same_reflectance_without_wraparound(tmp_path):
    dn = random_bands(12, seed=2)
    dn["B02"][0, 0] = 40000  # saturates at 32767
    dn["B03"][0, 0] = 1  # valid and dark
    shifted = {band: values + 1000 for band, values in dn.items()}  # what baseline 04.00 stores for the same scene
    shifted["B02"][0, 0] = 41000
    shifted["B03"][0, 0] = 500  # reflectance -0.05: below the offset, must not wrap around
    old, _ = run(
        make_product(tmp_path / "old", dn, baseline="0301"), tmp_path / "old.tif", resampling="nearest", **NO_DEM
    )
    new, tags = run(
        make_product(tmp_path / "new", shifted, baseline="0400"), tmp_path / "new.tif", resampling="nearest", **NO_DEM
    )
    assert json.loads(tags["RADIO_ADD_OFFSET"]) == dict.fromkeys(BANDS, -1000)
    assert old[1, 0, 0] == 32767 and new[1, 0, 0] == 32767
    assert old[2, 0, 0] == 1 and new[2, 0, 0] == -500
    mask = np.ones(old.shape, dtype=bool)
    mask[2, 0, 0] = False
    np.testing.assert_array_equal(old[mask], new[mask])


def test_no_data_in_one_band_is_no_data_everywhere_and_does_not_leak(tmp_path):
    dn = constant_bands(36, 2000)
    dn["B09"][2, 3] = 0  # one 60 m pixel outside the swath
    dn["B05"] = np.tile((1000 + 100 * np.arange(18)).astype(np.uint16), (18, 1))
    dn["B05"][:, 3] = 0  # one 20 m column
    values, tags = run(
        make_product(tmp_path, dn, baseline="0301"), tmp_path / "scene.tif", resampling="cubic", **NO_DEM
    )
    invalid = np.zeros((36, 36), dtype=bool)
    invalid[12:18, 18:24] = True
    invalid[:, 6:8] = True
    assert (values[:, invalid] == NODATA).all()
    assert (values[:, ~invalid] != NODATA).all()
    assert float(tags["VALID_FRACTION"]) == pytest.approx((~invalid).mean())
    # A constant band stays exactly constant next to the hole: the kernel renormalises over valid taps.
    assert (values[BANDS.index("B09")][~invalid] == 2000).all()
    # B05 beside its dead column: with bilinear, 10 m column 5 samples native 2.25 (taps 2 and 3), column 8
    # samples native 3.75 (taps 3 and 4); tap 3 is dead, so the other tap alone gives the value.
    bilinear, _ = run(
        make_product(tmp_path / "b", dn, baseline="0301"), tmp_path / "b.tif", resampling="bilinear", **NO_DEM
    )
    b05 = BANDS.index("B05")
    assert (bilinear[b05, 20:30, 5] == 1200).all() and (bilinear[b05, 20:30, 8] == 1400).all()
    assert (bilinear[b05, 20:30, 9] == 1425).all()  # native 4.25: 0.75 * 1400 + 0.25 * 1500, no dead tap


def test_zip_and_folder_give_identical_scenes_and_strips_do_not_show(tmp_path, tiny_demo):
    product = tiny_demo["products"][("32TNS", "20220201T102209")].path
    dem = tiny_demo["dem"].format(tile="32TNS")
    with zipfile.ZipFile(product) as archive:
        archive.extractall(tmp_path / "unpacked")
    folder = next((tmp_path / "unpacked").iterdir())
    options = {"resampling": "cubic", "dem_resampling": "cubic"}
    zipped, zipped_tags = run(product, tmp_path / "zip.tif", dem, block_rows=60, **options)
    unpacked, unpacked_tags = run(folder, tmp_path / "folder.tif", dem, block_rows=60, **options)
    one_strip, _ = run(product, tmp_path / "one.tif", dem, block_rows=1026, threads=2, **options)
    np.testing.assert_array_equal(zipped, unpacked)
    np.testing.assert_array_equal(zipped, one_strip)
    assert zipped_tags["PRODUCT"] == unpacked_tags["PRODUCT"] == folder.name
    assert (zipped == NODATA).any() and (zipped != NODATA).any()  # this scene has a swath edge


def test_scene_raster_is_a_cog_with_names_scales_and_provenance(tmp_path, tiny_demo):
    product = tiny_demo["products"][("32TNS", "20211208T102421")]
    output = tmp_path / "results" / "scenes" / "32TNS" / "20211208T102421.tif"
    preprocess_scene(product.path, tiny_demo["dem"].format(tile="32TNS"), output, {"resampling": "cubic"})
    with rasterio.open(output) as scene:
        assert scene.compression.name == "zstd" and scene.interleaving.name == "band"
        assert scene.dtypes == ("int16",) * 14 and scene.nodatavals == (NODATA,) * 14
        assert scene.descriptions == (*BANDS, "ELEVATION")
        assert scene.scales == (1e-4,) * 13 + (1.0,)
        assert scene.units[-1] == "metre"
        assert (scene.crs.to_epsg(), scene.transform) == (32632, tile_grid("32TNS", 120).transform())
        tags = scene.tags()
    assert tags["PRODUCT"] == product.path.name.removesuffix(".zip")
    assert (tags["PROCESSING_BASELINE"], tags["QUANTIFICATION_VALUE"]) == ("03.01", "10000")
    assert json.loads(tags["RADIO_ADD_OFFSET"]) == dict.fromkeys(BANDS, 0)
    assert json.loads(tags["CLIP"]) == {"method": "none", "limits": {}}
    assert tags["DEM"] == tiny_demo["dem"].format(tile="32TNS") and tags["DEM_RESAMPLING"] == "bilinear"
    assert tags["SNOWCLOUD_VERSION"] and json.loads(tags["PREPROCESS_OPTIONS"])["resampling"] == "cubic"
    assert sorted(p.name for p in output.parent.iterdir()) == [output.name]  # no temporary files left
    assert_valid_cog(output)


def test_percentile_and_sigma_clipping_use_exact_scene_statistics(tmp_path, tiny_demo):
    product = tiny_demo["products"][("32TMS", "20220201T102209")].path
    raw, _ = run(product, tmp_path / "raw.tif", **NO_DEM)
    percentile, tags = run(product, tmp_path / "p.tif", clip={"method": "percentile", "percentiles": [2, 98]}, **NO_DEM)
    sigma, sigma_tags = run(product, tmp_path / "s.tif", clip={"method": "sigma", "n_sigma": 1.5}, **NO_DEM)
    valid = raw[0] != NODATA
    limits = json.loads(tags["CLIP"])["limits"]
    sigma_limits = json.loads(sigma_tags["CLIP"])["limits"]
    for index, band in enumerate(BANDS):
        values = raw[index][valid]
        expected = np.percentile(values, [2, 98], method="inverted_cdf")
        assert limits[band] == [int(expected[0]), int(expected[1])]
        np.testing.assert_array_equal(percentile[index][valid], np.clip(values, *expected))
        mean, std = values.mean(), values.std()
        assert sigma_limits[band] == [math.ceil(mean - 1.5 * std), math.floor(mean + 1.5 * std)]
        np.testing.assert_array_equal(sigma[index][valid], np.clip(values, *sigma_limits[band]))
    assert (percentile[:, ~valid] == NODATA).all() and (sigma[:, ~valid] == NODATA).all()


def write_dem(path: Path, grid, function, margin_arcsec: int = 6, west_fraction: float = 1.0) -> None:
    """A 1 arcsecond geographic DEM over the tile, elevation = function(lon, lat) at pixel centres; with
    west_fraction < 1 it covers only that western share of the tile's longitudes."""
    west, south, east, north = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds)
    east = west + west_fraction * (east - west)
    west, south = math.floor(west * 3600 - margin_arcsec) / 3600, math.floor(south * 3600 - margin_arcsec) / 3600
    east = (math.ceil(east * 3600 + margin_arcsec) if west_fraction == 1 else math.floor(east * 3600)) / 3600
    north = math.ceil(north * 3600 + margin_arcsec) / 3600
    width, height = round((east - west) * 3600), round((north - south) * 3600)
    affine = Affine(1 / 3600, 0, west, 0, -1 / 3600, north)
    lon, lat = np.meshgrid(west + (np.arange(width) + 0.5) / 3600, north - (np.arange(height) + 0.5) / 3600)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=affine,
    ) as out:
        out.write(function(lon, lat).astype(np.float32), 1)


def pixel_lonlat(grid):
    x, y = np.meshgrid(grid.x0 + 10 * (np.arange(grid.size) + 0.5), grid.y0 - 10 * (np.arange(grid.size) + 0.5))
    lon, lat = transform(grid.crs, "EPSG:4326", x.ravel(), y.ravel())
    return np.reshape(lon, x.shape), np.reshape(lat, x.shape)


def test_dem_reprojection_puts_known_elevations_at_known_coordinates(tmp_path):
    grid = tile_grid("32TNS", 36)
    safe = make_product(tmp_path, constant_bands(36))
    lon, lat = pixel_lonlat(grid)
    lon0, lat0 = lon.min(), lat.min()

    def plane(x, y):
        return 1000 + 20_000 * (x - lon0) + 30_000 * (y - lat0)

    write_dem(tmp_path / "plane.tif", grid, plane)
    values, tags = run(safe, tmp_path / "plane_scene.tif", tmp_path / "plane.tif", dem_resampling="bilinear")
    assert values.shape[0] == 14 and tags["DEM"] == str(tmp_path / "plane.tif")
    np.testing.assert_allclose(values[13], plane(lon, lat), atol=0.51)  # bilinear is exact on a plane, then rounded

    # One DEM pixel at 3000 m among 1000 m: with nearest, exactly the scene pixels whose centres fall in it.
    spike_lon, spike_lat = lon[10, 20], lat[10, 20]
    column, row = math.floor(spike_lon * 3600), math.floor(spike_lat * 3600)

    def spike(x, y):
        return np.where((np.floor(x * 3600) == column) & (np.floor(y * 3600) == row), 3000.0, 1000.0)

    write_dem(tmp_path / "spike.tif", grid, spike)
    values, _ = run(safe, tmp_path / "spike_scene.tif", tmp_path / "spike.tif", dem_resampling="nearest")
    np.testing.assert_array_equal(values[13], spike(lon, lat))
    assert values[13, 10, 20] == 3000


def test_demo_dem_gives_the_demo_terrain(tmp_path, tiny_demo):
    product = tiny_demo["products"][("32TMS", "20211208T102421")].path
    values, _ = run(product, tmp_path / "scene.tif", tiny_demo["dem"].format(tile="32TMS"), dem_resampling="cubic")
    grid = tile_grid("32TMS", 120)
    x, y = np.meshgrid(grid.x0 + 10 * (np.arange(120) + 0.5), grid.y0 - 10 * (np.arange(120) + 0.5))
    terrain = Landscape(2023, 120).elevation_at(x, y)
    valid = values[13] != NODATA
    # The 120-pixel demo squeezes a whole tile's relief into 1.2 km: the terrain changes by ~470 m from one
    # ~30 m DEM pixel to the next, so resampling errors of tens of metres are expected; a shifted or flipped
    # DEM would be off by hundreds.
    assert np.corrcoef(values[13][valid], terrain[valid])[0, 1] > 0.97
    assert np.median(np.abs(values[13][valid] - terrain[valid])) < 80


def test_dem_not_covering_the_tile_is_refused_with_the_missing_share(tmp_path):
    grid = tile_grid("32TNS", 60)
    safe = make_product(tmp_path, constant_bands(60))
    dem = tmp_path / "west.tif"
    write_dem(dem, grid, lambda x, y: np.full(x.shape, 500.0), west_fraction=0.6)
    lon, _ = pixel_lonlat(grid)
    with rasterio.open(dem) as source:
        expected_missing = float((lon > source.bounds.right).mean())
    with pytest.raises(DemError) as error:
        preprocess_scene(safe, dem, tmp_path / "scene.tif", {})
    message = str(error.value)
    assert message.startswith(f"DEM {dem} covers about ") and "of tile 32TNS (" in message
    missing = float(message.split("(")[1].split(" %")[0])
    assert missing == pytest.approx(100 * expected_missing, abs=3)
    assert not (tmp_path / "scene.tif").exists()

    values, tags = run(safe, tmp_path / "scene.tif", dem, dem_max_missing_fraction=0.6)
    assert float(tags["DEM_MISSING_FRACTION"]) == pytest.approx(expected_missing, abs=0.02)
    uncovered = values[13] == NODATA
    assert uncovered.mean() == pytest.approx(expected_missing, abs=0.02)
    assert (values[:, uncovered] == NODATA).all() and (values[:, ~uncovered] == 500).any()


def test_a_dem_beyond_the_int16_range_is_refused_not_saturated(tmp_path):
    """A DEM in centimetres (here the Alps, 1500-4000 m, as 150000-400000) would saturate at 32767 unseen."""
    grid = tile_grid("32TNS", 36)
    safe = make_product(tmp_path, constant_bands(36))
    dem = tmp_path / "centimetres.tif"
    write_dem(dem, grid, lambda x, y: np.full(x.shape, 250_000.0))
    with pytest.raises(DemError, match=rf"DEM {dem} has heights from 250000 to 250000 on tile 32TNS, beyond .* metres"):
        preprocess_scene(safe, dem, tmp_path / "scene.tif", {})
    assert not (tmp_path / "scene.tif").exists()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_unreadable_dem_and_dem_without_crs_are_named(tmp_path):
    safe = make_product(tmp_path, constant_bands(12))
    not_a_raster = tmp_path / "dem.tif"
    not_a_raster.write_text("not a raster")
    with pytest.raises(DemError, match=f"cannot read DEM {not_a_raster}"):
        preprocess_scene(safe, not_a_raster, tmp_path / "scene.tif", {})
    no_crs = tmp_path / "no_crs.tif"
    with rasterio.open(no_crs, "w", driver="GTiff", width=4, height=4, count=1, dtype="float32") as out:
        out.write(np.zeros((4, 4), dtype=np.float32), 1)
    with pytest.raises(DemError, match=f"DEM {no_crs} has no coordinate reference system"):
        preprocess_scene(safe, no_crs, tmp_path / "scene.tif", {})
    with pytest.raises(PreprocessError, match="preprocess.dem is on but no DEM was given"):
        preprocess_scene(safe, None, tmp_path / "scene.tif", {})


def test_b10_zeros_over_water_are_values_and_no_data_is_where_the_other_bands_are_zero(tmp_path):
    """An older-baseline product (no offset) whose cirrus band reads DN 0 over a lake, as real ones do: the lake
    keeps data (B10 = 0), no 60 m holes; outside the swath (DN 0 in every band) the scene has no data."""
    dn = constant_bands(36, 2000)
    dn["B10"][:] = 15
    dn["B10"][1:4, 2:5] = 0  # a lake of 3 x 3 60 m pixels: 18 x 18 10 m pixels
    for band in BANDS:  # the swath ends at 10 m column 30 (60 m column 5) in every band
        k = RESOLUTION_M[band] // 10
        dn[band][:, 30 // k :] = 0
    values, tags = run(
        make_product(tmp_path, dn, baseline="0301"), tmp_path / "scene.tif", resampling="nearest", **NO_DEM
    )
    b10 = values[BANDS.index("B10")]
    outside = np.zeros((36, 36), dtype=bool)
    outside[:, 30:] = True
    assert (values[:, outside] == NODATA).all() and (values[:, ~outside] != NODATA).all()
    assert (b10[6:24, 12:30] == 0).all() and (b10[:6, :30] == 15).all()
    assert float(tags["VALID_FRACTION"]) == pytest.approx(30 / 36)


def test_demo_products_of_older_baselines_read_b10_zero_in_dark_places_and_the_scene_keeps_it(tmp_path, tiny_demo):
    product = tiny_demo["products"][("32TNS", "20211208T102421")].path  # N0301: no offset, no swath edge
    with rasterio.open(open_safe(product).band_paths["B10"]) as band:
        zeros = int((band.read(1) == 0).sum())
    assert zeros > 0, "the demo's cirrus band reads 0 over dark low ground and water, as real products do"
    values, _ = run(product, tmp_path / "scene.tif", resampling="nearest", **NO_DEM)
    assert ((values[BANDS.index("B10")] == 0) & (values[0] != NODATA)).sum() == 36 * zeros
    assert (values != NODATA).all()


def test_all_no_data_scene_is_an_error_naming_the_product(tmp_path):
    dn = {band: np.zeros_like(values) for band, values in constant_bands(12).items()}
    dn["B10"][:] = 7  # a band whose 0 is a value does not make a pixel valid
    safe = make_product(tmp_path, dn)
    with pytest.raises(PreprocessError, match=f"{safe}: no valid pixel"):
        preprocess_scene(safe, None, tmp_path / "scene.tif", NO_DEM)
    assert not (tmp_path / "scene.tif").exists()


def test_bad_products_and_options_are_named(tmp_path, tiny_demo):
    text = tmp_path / "S2B_MSIL1C_20220201T102209_N0400_R065_T32TNS_20220201T130622.SAFE.zip"
    text.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(SafeError, match=f"{text}: not a zip file"):
        preprocess_scene(text, None, tmp_path / "scene.tif", NO_DEM)
    product = tiny_demo["products"][("32TNS", "20211208T102421")].path
    with pytest.raises(ConfigError, match=r"unknown key 'preprocess.resampeling' \(did you mean 'resampling'\?\)"):
        preprocess_scene(product, None, tmp_path / "scene.tif", {"resampeling": "cubic", "dem": False})
    with pytest.raises(ConfigError, match="preprocess.block_rows: 100 is not a multiple of 6"):
        preprocess_scene(product, None, tmp_path / "scene.tif", {"block_rows": 100, "dem": False})


@pytest.mark.parametrize("clip", ["none", "percentile"])
def test_a_failure_leaves_neither_output_nor_temporary_files(tmp_path, tiny_demo, monkeypatch, clip):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cog, "assemble_cog", killed)  # every part of the COG written, the COG not yet
    output = tmp_path / "scenes" / "scene.tif"
    product = tiny_demo["products"][("32TNS", "20211208T102421")].path
    with pytest.raises(KeyboardInterrupt):
        preprocess_scene(product, None, output, {"dem": False, "block_rows": 60, "clip": {"method": clip}})
    assert list(output.parent.iterdir()) == []


def test_a_band_that_cannot_be_decoded_is_named_and_leaves_nothing(tmp_path):
    safe = make_product(tmp_path, random_bands(240), zipped=False)
    b05 = next(safe.rglob("*_B05.jp2"))
    b05.write_bytes(b05.read_bytes()[: b05.stat().st_size // 2])  # the second half of the tiles is gone
    (safe / "manifest.safe").unlink()  # whose checksum open_safe would check first
    output = tmp_path / "scenes" / "scene.tif"
    with pytest.raises(PreprocessError, match=f"cannot decode band .*_B05.jp2 in {safe}"):
        preprocess_scene(safe, None, output, {"dem": False, "block_rows": 60})
    assert list(output.parent.iterdir()) == []


def test_scene_overviews_are_gdal_averages(tmp_path, tiny_demo):
    product = tiny_demo["products"][("32TNS", "20220201T102209")].path
    output = tmp_path / "scene.tif"
    preprocess_scene(product, None, output, {"dem": False, "block_rows": 60})
    with rasterio.open(output) as scene:
        base = scene.read()
        assert scene.overviews(1) == []  # 120 pixels fit in one 512 block
        profile = dict(scene.profile, width=600)
    wide = np.concatenate([base] * 5, axis=2)  # 120 x 600: one overview level
    with CogWriter(tmp_path / "ours.tif", profile, True, threads=2, compress="zstd") as writer:
        for row in range(0, 120, 42):  # strips that do not fit the 512-row tiles nor each other
            writer.write(wide[:, row : row + 42], row)
        writer.finish()
    with rasterio.open(tmp_path / "stack.tif", "w", **dict(profile, tiled=False, compress=None, blockysize=8)) as stack:
        stack.write(wide)
    rasterio.shutil.copy(
        tmp_path / "stack.tif",
        tmp_path / "gdal.tif",
        driver="COG",
        COMPRESS="ZSTD",
        BLOCKSIZE=512,
        OVERVIEW_RESAMPLING="AVERAGE",
    )
    with (
        rasterio.open(tmp_path / "ours.tif", overview_level=0) as ours,
        rasterio.open(tmp_path / "gdal.tif", overview_level=0) as gdal,
    ):
        assert ours.shape == gdal.shape == (60, 300)
        assert np.abs(ours.read().astype(int) - gdal.read()).max() <= 1  # rounding of negative means
    with rasterio.open(tmp_path / "ours.tif") as ours:
        np.testing.assert_array_equal(ours.read(), wide)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gdal.tif", "ours.tif", "scene.tif", "stack.tif"]


def test_no_data_by_bitwise_passes_equals_a_masked_copy():
    rng = np.random.default_rng(2)
    values = rng.integers(-32768, 32768, (3, 50, 70)).astype(np.int16)
    values[:, 0, :3] = [-32767, 32767, 0]
    valid = rng.random((50, 70)) < 0.7
    expected = values.copy()
    np.copyto(expected, np.int16(NODATA), where=~valid)
    preprocess._set_no_data(values, valid)
    np.testing.assert_array_equal(values, expected)


def test_cubic_overshoot_and_10m_values_saturate_without_wrapping_around(tmp_path):
    dn = constant_bands(36, 2000)
    dn["B05"] = np.tile(np.uint16([1001] * 9 + [33001] * 9), (18, 1))  # a step from 1 to 32001 after the offset
    dn["B02"][0, :3] = [33767, 33768, 65535]  # 32767 and beyond after the offset
    values, _ = run(make_product(tmp_path, dn, baseline="0400"), tmp_path / "scene.tif", resampling="cubic", **NO_DEM)
    b05 = values[BANDS.index("B05")]
    assert b05.max() == 32767 and b05.min() < 1  # cubic overshoots on both sides of the step, saturating above
    assert values[BANDS.index("B02"), 0, :4].tolist() == [32767, 32767, 32767, 1000]


@pytest.mark.parametrize("offset", [-1000, 0, 1000, -1000.5])
def test_10m_offset_in_integers_equals_the_float_path(offset):
    every_dn = np.arange(0, 65536, dtype=np.uint16).reshape(256, 256)
    for dn in (every_dn, every_dn[:100] // 3):  # saturating, and not (the int16 path unless the offset is fractional)
        expected = np.clip(np.rint(dn.astype(np.float32) + np.float32(offset)), *preprocess.VALUE_RANGE).astype(
            np.int16
        )
        out = np.empty(dn.shape, dtype=np.int16)
        preprocess._offset_dn(dn, offset, out, resample.Scratch())
        np.testing.assert_array_equal(out, expected)


def test_a_models_scenes_are_the_shared_ones_unless_its_value_options_differ():
    """options_for_model: the configured scenes serve a model whose recorded options agree on every key that
    changes values (storage keys do not count); otherwise the model's options over the configured ones."""
    configured = validated({}, "preprocess")
    values = config.scene_value_options(configured)
    assert config.options_for_model(configured, None) is None
    assert config.options_for_model({**configured, "compress": "lzw"}, values) is None
    own = config.options_for_model({**configured, "compress": "lzw"}, {**values, "resampling": "cubic"})
    assert own["resampling"] == "cubic" and own["compress"] == "lzw"
