import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import transform, transform_bounds
from safe_factory import band_shape, constant_bands, make_product

from snowcloud import cog, preprocess, resample
from snowcloud.bands import BANDS, RESOLUTION_M
from snowcloud.cog import CogWriter, average_2x2
from snowcloud.config import ConfigError
from snowcloud.demo.landscape import Landscape
from snowcloud.demo.tiles import tile_grid
from snowcloud.preprocess import PreprocessError, preprocess_scene
from snowcloud.resample import cubic_weight
from snowcloud.safe import SafeError
from snowcloud.scene import NODATA

NO_DEM = {"dem": False}


def run(safe, output: Path, dem_path=None, threads=1, **options) -> tuple[np.ndarray, dict]:
    preprocess_scene(safe, dem_path, output, options, threads=threads)
    with rasterio.open(output) as scene:
        return scene.read(), scene.tags()


def int16_profile(width: int, height: int, count: int, origin: tuple[float, float] = (0, 0)) -> dict:
    """The profile a CogWriter takes: an int16 image with NODATA on a 10 m UTM grid."""
    transform = Affine(10, 0, origin[0], 0, -10, origin[1])
    return dict(width=width, height=height, count=count, dtype="int16", nodata=NODATA, crs="EPSG:32632", transform=transform)


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
            out[r, c] = sum(wr * wc * native[clamp(i), clamp(j)] for i, wr in weights(r).items() for j, wc in weights(c).items())
    return np.rint(out)


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
    assert (nearest[b09, :6, :6] == 1000).all() and (nearest[b09, 6:, :6] == 3000).all() and (nearest[b09, 6:, 6:] == 4000).all()
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
    old, _ = run(make_product(tmp_path / "old", dn, baseline="0301"), tmp_path / "old.tif", resampling="nearest", **NO_DEM)
    new, tags = run(make_product(tmp_path / "new", shifted, baseline="0400"), tmp_path / "new.tif", resampling="nearest", **NO_DEM)
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
    values, tags = run(make_product(tmp_path, dn, baseline="0301"), tmp_path / "scene.tif", resampling="cubic", **NO_DEM)
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
    bilinear, _ = run(make_product(tmp_path / "b", dn, baseline="0301"), tmp_path / "b.tif", resampling="bilinear", **NO_DEM)
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
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32", crs="EPSG:4326", transform=affine) as out:
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
    with pytest.raises(PreprocessError) as error:
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


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_unreadable_dem_and_dem_without_crs_are_named(tmp_path):
    safe = make_product(tmp_path, constant_bands(12))
    not_a_raster = tmp_path / "dem.tif"
    not_a_raster.write_text("not a raster")
    with pytest.raises(PreprocessError, match=f"cannot read DEM {not_a_raster}"):
        preprocess_scene(safe, not_a_raster, tmp_path / "scene.tif", {})
    no_crs = tmp_path / "no_crs.tif"
    with rasterio.open(no_crs, "w", driver="GTiff", width=4, height=4, count=1, dtype="float32") as out:
        out.write(np.zeros((4, 4), dtype=np.float32), 1)
    with pytest.raises(PreprocessError, match=f"DEM {no_crs} has no coordinate reference system"):
        preprocess_scene(safe, no_crs, tmp_path / "scene.tif", {})
    with pytest.raises(PreprocessError, match="preprocess.dem is on but no DEM was given"):
        preprocess_scene(safe, None, tmp_path / "scene.tif", {})


def test_all_no_data_scene_is_an_error_naming_the_product(tmp_path):
    dn = constant_bands(12)
    dn["B10"][:] = 0
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
    output = tmp_path / "scenes" / "scene.tif"
    with pytest.raises(PreprocessError, match=f"cannot decode band .*_B05.jp2 in {safe}"):
        preprocess_scene(safe, None, output, {"dem": False, "block_rows": 60})
    assert list(output.parent.iterdir()) == []


def test_average_overviews_match_gdal_and_skip_no_data():
    values = np.array([[[1, 2, 5, NODATA, 7], [3, 4, 6, 8, 9], [NODATA, NODATA, 10, 11, 12]]], dtype=np.int16)
    mean = average_2x2(values, NODATA)
    # 2 x 2 blocks: (1+2+3+4)/4 = 2.5 -> 3; (5+6+8)/3 = 6.33 -> 6; (7+9)/2 = 8; bottom row: none; (10+11)/2; 12.
    np.testing.assert_array_equal(mean, [[[3, 6, 8], [NODATA, 11, 12]]])


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
    rasterio.shutil.copy(tmp_path / "stack.tif", tmp_path / "gdal.tif", driver="COG", COMPRESS="ZSTD", BLOCKSIZE=512, OVERVIEW_RESAMPLING="AVERAGE")
    with rasterio.open(tmp_path / "ours.tif", overview_level=0) as ours, rasterio.open(tmp_path / "gdal.tif", overview_level=0) as gdal:
        assert ours.shape == gdal.shape == (60, 300)
        assert np.abs(ours.read().astype(int) - gdal.read()).max() <= 1  # rounding of negative means
    with rasterio.open(tmp_path / "ours.tif") as ours:
        np.testing.assert_array_equal(ours.read(), wide)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gdal.tif", "ours.tif", "scene.tif", "stack.tif"]


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
        assemble(template, levels, target)

    assemble = cog.assemble_cog
    monkeypatch.setattr(cog, "assemble_cog", measure_then_assemble)
    with rasterio.Env(GDAL_CACHEMAX=5 * 2**19), CogWriter(tmp_path / "x.tif", profile, True, compress="zstd", predictor=2) as writer:
        for row in range(0, 1100, 100):
            writer.write(image[:, row : row + 100], row)
        writer.finish()
    assert len(dead_bytes) == 3 + 2 + 1 and max(dead_bytes) < 4096  # headers and tags only
    with rasterio.open(tmp_path / "x.tif") as written:
        np.testing.assert_array_equal(written.read(), image)


@pytest.mark.parametrize("method", ["bilinear", "cubic"])
def test_upsampling_a_few_rows_at_a_time_changes_no_value(method):
    rng = np.random.default_rng(1)
    native = rng.uniform(-1000, 12000, (40 + 4, 30 + 4)).astype(np.float32)
    valid = np.ones(native.shape, dtype=bool)
    valid[:, :12][np.tri(44, 12, -20, dtype=bool)] = False  # a swath edge across the window
    native[~valid] = -1e6
    taps = resample.phase_taps(2, method)

    def upsampled(rows_at_once: int) -> np.ndarray:
        out = np.full((80, 60), np.nan, dtype=np.float32)
        resample.upsample(native, 2, taps, valid, rows_at_once, lambda first, rows: out.__setitem__(slice(first, first + len(rows)), rows))
        return out

    whole = upsampled(40)
    valid_output = np.repeat(np.repeat(valid[2:-2, 2:-2], 2, axis=0), 2, axis=1)
    assert not np.isnan(whole).any() and whole[valid_output].min() > -10000  # no-data input never leaks
    for rows_at_once in (1, 7, 16):
        np.testing.assert_array_equal(upsampled(rows_at_once), whole)


def test_no_data_by_bitwise_passes_equals_a_masked_copy():
    rng = np.random.default_rng(2)
    values = rng.integers(-32768, 32768, (3, 50, 70)).astype(np.int16)
    values[:, 0, :3] = [-32767, 32767, 0]
    valid = rng.random((50, 70)) < 0.7
    expected = values.copy()
    np.copyto(expected, np.int16(NODATA), where=~valid)
    preprocess._set_no_data(values, valid)
    np.testing.assert_array_equal(values, expected)


@pytest.mark.parametrize(("method", "a", "factor"), [("bilinear", -0.5, 2), ("bilinear", -0.5, 6), ("cubic", -0.5, 2), ("cubic", -0.75, 6)])
def test_gain_bounds_every_upsampled_value_also_beside_no_data(method, a, factor):
    rng = np.random.default_rng(factor)
    native = rng.choice(np.float32([-30000, 30000]), (24 + 4, 24 + 4))  # extremes side by side: the largest overshoot
    valid = rng.random(native.shape) < 0.8
    taps = resample.phase_taps(factor, method, a)
    out = np.empty((24 * factor, 24 * factor), dtype=np.float32)
    for mask in (None, valid):
        resample.upsample(native, factor, taps, mask, 5, lambda first, rows: out.__setitem__(slice(first, first + len(rows)), rows))
        assert np.abs(out).max() <= 30000 * resample.gain(taps) * (1 + 1e-6)
    if method == "cubic":
        assert resample.gain(taps) > 1 and np.abs(out).max() > 30000  # cubic overshoots: the bound is not idle
    else:
        assert resample.gain(taps) == pytest.approx(1)


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
        expected = np.clip(np.rint(dn.astype(np.float32) + np.float32(offset)), *preprocess.VALUE_RANGE).astype(np.int16)
        out = np.empty(dn.shape, dtype=np.int16)
        preprocess._offset_dn(dn, offset, out, resample.Scratch())
        np.testing.assert_array_equal(out, expected)


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
