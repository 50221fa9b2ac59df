import numpy as np
from helpers.rasters import synthetic_scene, write_scene
from helpers.surface_spectra import SPECTRA

from snowcloud.bands import BANDS
from snowcloud.baselines import BASELINES, NDSI_BANDS, StripRows, ndsi_rule, normalised_difference
from snowcloud.labels import IGNORE_INDEX
from snowcloud.scene import NODATA

OPTIONS = {"snow_ndsi": 0.4, "snow_green": 0.1, "cloud_blue": 0.25, "water_ndwi": 0.2}


def bands_of(reflectances: list[tuple[float, float, float, float]]) -> dict[str, np.ndarray]:
    """Scene values (reflectance * 10000, int16 like the scene raster) of a row of pixels."""
    values = np.rint(np.asarray(reflectances) * 10000).astype(np.int16)
    return {name: values[None, :, i] for i, name in enumerate(("B02", "B03", "B08", "B11"))}


def test_typical_surfaces_get_their_class():
    names = list(SPECTRA)
    bands = bands_of([SPECTRA[name][0] for name in names])
    classes = ndsi_rule(bands, OPTIONS, np.ones((1, len(names)), bool))
    assert dict(zip(names, classes[0].tolist())) == {name: SPECTRA[name][1] for name in names}
    assert classes.dtype == np.uint8


def test_thresholds_come_from_the_options():
    bands = bands_of([SPECTRA["shaded snow"][0]])
    assert ndsi_rule(bands, {**OPTIONS, "snow_green": 0.2}, np.ones((1, 1), bool))[0, 0] != 1
    assert ndsi_rule(bands, {**OPTIONS, "snow_ndsi": 0.8}, np.ones((1, 1), bool))[0, 0] != 1


def test_precedence_cloud_then_snow_then_water():
    # Snow that also passes the water test (NDWI (0.5-0.3)/0.8 = 0.25 > 0.2): snow wins.
    wet_snow = (0.55, 0.50, 0.30, 0.05)
    # Bright pixel passing the cloud test and the water test (NDWI 0.33): cloud wins.
    bright_watery = (0.40, 0.40, 0.20, 0.35)
    classes = ndsi_rule(bands_of([wet_snow, bright_watery]), OPTIONS, np.ones((1, 2), bool))
    assert classes[0].tolist() == [1, 2]


def test_invalid_pixels_and_dark_offset_pixels():
    # Negative values (DN below the -1000 offset) count as reflectance 0 and give no NaN; invalid -> 255.
    bands = {name: np.array([[-5, 0, -32768]], np.int16) for name in ("B02", "B03", "B08", "B11")}
    valid = np.array([[True, True, False]])
    classes = ndsi_rule(bands, OPTIONS, valid)
    assert classes[0].tolist() == [0, 0, IGNORE_INDEX]


def test_normalised_difference_is_zero_where_both_are_zero():
    a, b = np.array([0.0, 0.3, 0.1], np.float32), np.array([0.0, 0.1, 0.3], np.float32)
    np.testing.assert_allclose(normalised_difference(a, b), [0.0, 0.5, -0.5], rtol=1e-6)


def test_the_ndsi_baseline_of_a_scene_raster_is_the_rule_on_its_bands_in_any_windows(tmp_path):
    values = synthetic_scene(np.random.default_rng(5), 150, 20)
    values[:, 140:, :3] = NODATA
    scene = write_scene(tmp_path / "32TNS" / "20220201T102209.tif", values)  # 64-row blocks: strips of 64, 64, 22
    bands = {name: values[BANDS.index(name)] for name in NDSI_BANDS}
    expected = ndsi_rule(bands, OPTIONS, values[0] != NODATA)
    rows = StripRows(BASELINES["ndsi"](scene, {"ndsi": OPTIONS}, 1))
    taken = [rows.take(n) for n in (10, 100, 1, 39)]  # across strip borders, within one, to the end
    np.testing.assert_array_equal(np.concatenate(taken), expected)
    assert (expected[140:, :3] == IGNORE_INDEX).all()
