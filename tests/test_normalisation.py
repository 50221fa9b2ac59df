"""Normalisation specs: thesis constants, numerics, bounds, streaming statistics, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.rasters import synthetic_scene, write_scene

from snowcloud import normalisation
from snowcloud.normalisation import NormalisationError
from snowcloud.scene import NODATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_every_spec_is_json_serialisable_named_and_fresh():
    for name in normalisation.names():
        spec = normalisation.spec(name)
        assert spec["name"] == name and spec["version"] == 1
        assert json.loads(json.dumps(spec)) == spec
        spec["version"] = 99
        assert normalisation.spec(name)["version"] == 1
    assert normalisation.DEFAULT == "snowcloud-v1"


def test_unknown_name_or_version_is_an_error():
    with pytest.raises(NormalisationError, match="unknown normalisation 'dn'"):
        normalisation.spec("dn")
    spec = normalisation.spec("legacy-dn10000") | {"version": 2}
    with pytest.raises(NormalisationError, match="version 2"):
        normalisation.apply(spec, np.zeros((13, 2, 2), np.float32), np.ones((2, 2), bool), {})


def test_dynamic_world_offsets_match_the_thesis():
    thesis = [0.5245, 0.5470, 0.5728, 0.6057, 0.6024, 0.5964, 0.6009, 0.6063, 0.6095, 0.6049, 0.6064, 0.6829, 0.6716]
    offsets = normalisation.dynamic_world_offsets(normalisation.spec("dynamic-world-percentile"))
    np.testing.assert_allclose(offsets, thesis, atol=5e-5)


def test_dynamic_world_maps_percentiles_to_the_sigmoid_anchors_and_floors_dark_values():
    spec = normalisation.spec("dynamic-world-percentile")
    offsets = normalisation.dynamic_world_offsets(spec)
    p30, p70 = np.array(spec["p30"], np.float32), np.array(spec["p70"], np.float32)
    window = np.stack([p30, p70, np.zeros(13), np.full(13, -500.0), np.ones(13)], axis=1)[:, :, None]
    window = np.concatenate([window, np.array([1862.78, 1862.78 + 3913, 0, 0, 0])[None, :, None]]).astype(np.float32)
    out = normalisation.apply(spec, window, np.ones((5, 1), bool), {})
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(out[:13, 0, 0], sigmoid(-1.7346) - offsets, atol=1e-5)
    np.testing.assert_allclose(out[:13, 1, 0], sigmoid(1.7346) - offsets, atol=1e-5)
    # thesis: l = 0 where x == 0; after the offset x <= 0 is floored to 1, whose log10 is the same 0
    expected_zero = sigmoid(-np.log10(p30) * (2 * 1.7346) / (np.log10(p70) - np.log10(p30)) - 1.7346) - offsets
    for column in (2, 3, 4):
        np.testing.assert_allclose(out[:13, column, 0], expected_zero, atol=1e-5)
    np.testing.assert_allclose(out[13, :2, 0], [0.0, 1.0], atol=1e-6)
    assert np.all(out[:13] > -1) and np.all(out[:13] < 1)


def test_legacy_divides_bands_and_elevation_by_10000():
    window = np.stack([np.full((3, 4), v, np.float32) for v in [*range(0, 13000, 1000), 3913]])
    out = normalisation.apply(normalisation.spec("legacy-dn10000"), window, np.ones((3, 4), bool), {})
    np.testing.assert_allclose(out[:, 0, 0], [*np.arange(13) / 10, 0.3913], rtol=1e-6)


def test_snowcloud_v1_constants_derive_from_the_thesis_percentiles():
    spec = normalisation.spec("snowcloud-v1")
    t = lambda dn: np.arcsinh(np.asarray(dn) / spec["band_scale"] / spec["asinh_scale"])  # noqa: E731
    low, high = t(normalisation.DW_P30), t(normalisation.DW_P70)
    quantile_70 = 0.5244  # of the standard normal
    np.testing.assert_allclose(spec["centre"], (low + high) / 2, atol=5e-5)
    np.testing.assert_allclose(spec["scale"], (high - low) / (2 * quantile_70), atol=5e-5)


@pytest.mark.parametrize("name", normalisation.names())
def test_every_spec_fits_float16_and_is_monotonic_over_the_whole_int16_range(name, rng):
    values = np.arange(-32767, 32768, 7, dtype=np.float32)
    window = np.broadcast_to(values, (14, 1, values.size)).copy()
    statistics = {}
    if name == "sigma-clip":
        statistics = {"low": [100.0] * 13, "high": [9000.0] * 13, "elevation_max": 4000.0}
    out = normalisation.apply(normalisation.spec(name), window, np.ones((1, values.size), bool), statistics)
    assert out.dtype == np.float32
    assert np.isfinite(out.astype(np.float16)).all()
    assert np.all(np.diff(out[:, 0], axis=1) >= 0), "normalisation must keep the order of values"
    if name == "snowcloud-v1":
        assert np.abs(out).max() <= normalisation.spec(name)["clip"]
        realistic = out[:13, 0, (values >= -999) & (values <= 20000)]
        assert realistic.min() > -5 and realistic.max() < 3, "v1 keeps real reflectances in a few units"


@pytest.mark.parametrize("name", normalisation.names())
def test_invalid_pixels_become_zero_and_the_input_is_untouched(name, rng):
    window = synthetic_scene(rng, 8, 9).astype(np.float32)
    window[:, 2, 3] = NODATA
    before = window.copy()
    valid = np.all(window != NODATA, axis=0)
    statistics = {"low": [0.0] * 13, "high": [9000.0] * 13, "elevation_max": 900.0} if name == "sigma-clip" else {}
    out = normalisation.apply(normalisation.spec(name), window, valid, statistics)
    assert np.all(out[:, 2, 3] == 0)
    assert np.count_nonzero(out[:, valid]) > 0.9 * out[:, valid].size
    np.testing.assert_array_equal(window, before)


@pytest.mark.parametrize("name", normalisation.names())
@pytest.mark.parametrize("channels", [13, 14])
def test_a_large_int16_window_looked_up_equals_the_method_computed_on_float32_bit_for_bit(name, channels, rng):
    """Every int16 value of every channel, in a window large enough for the value table, scene-like values and
    no-data pixels among them: the same float32 numbers as the method computed on the values as float32."""
    every_value = np.arange(-(2**15), 2**15, dtype=np.int16)
    window = np.stack([np.append(rng.permutation(every_value), every_value[:1024]).reshape(260, 256)
                       for _ in range(channels)])  # fmt: skip
    window[:, :40] = synthetic_scene(rng, 40, 256)[:channels]
    window[:, 50:60, 70:90] = NODATA
    assert window[0].size > normalisation.INT16_VALUES  # large enough for the value table
    valid = np.all(window != NODATA, axis=0)
    statistics = {"low": [120.0] * 13, "high": [8500.0] * 13, "elevation_max": 3900.0} if name == "sigma-clip" else {}
    spec, before = normalisation.spec(name), window.copy()
    computed = normalisation.apply(spec, window.astype(np.float32), valid, statistics)
    looked_up = normalisation.apply(spec, window, valid, statistics)
    assert looked_up.dtype == np.float32 and looked_up.shape == window.shape
    np.testing.assert_array_equal(looked_up.view(np.uint32), computed.view(np.uint32))
    np.testing.assert_array_equal(window, before)


def test_a_normaliser_makes_the_value_table_once_for_all_windows_of_a_scene(rng, monkeypatch):
    """Windows of one scene through a Normaliser: the value table is made once per channel count, and each window
    gets what `apply` gives it alone (which makes the table for every window)."""
    made = []
    value_table = normalisation._value_table
    monkeypatch.setattr(normalisation, "_value_table", lambda *args: made.append(args[-1]) or value_table(*args))
    spec = normalisation.spec("snowcloud-v1")
    normalise = normalisation.Normaliser(spec, {})
    windows = [synthetic_scene(rng, 300, 256) for _ in range(3)]
    for window in windows:
        valid = np.all(window != NODATA, axis=0)
        assert window.dtype == np.int16 and window[0].size > normalisation.INT16_VALUES
        np.testing.assert_array_equal(normalise(window, valid, "w"), normalisation.apply(spec, window, valid, {}))
        np.testing.assert_array_equal(normalise(window[:13], valid), normalisation.apply(spec, window[:13], valid, {}))
    assert made == [14, 14, 13, 13, 14, 13, 14, 13], "once per channel count for the Normaliser, every time for apply"


def test_nan_input_is_an_error_naming_the_source():
    window = np.full((13, 2, 2), 500, np.float32)
    window[4, 1, 0] = np.nan
    with pytest.raises(NormalisationError, match=r"scene\.tif.*NaN.*channel 4, row 1, col 0"):
        normalisation.apply(normalisation.spec("legacy-dn10000"), window, np.ones((2, 2), bool), {}, source="scene.tif")


def test_bad_shapes_and_missing_statistics_are_errors():
    spec = normalisation.spec("sigma-clip")
    with pytest.raises(NormalisationError, match="expected"):
        normalisation.apply(spec, np.zeros((3, 2, 2), np.float32), np.ones((2, 2), bool), {})
    with pytest.raises(NormalisationError, match="does not match"):
        normalisation.apply(spec, np.zeros((13, 2, 2), np.float32), np.ones((3, 2), bool), {})
    with pytest.raises(NormalisationError, match="needs the scene statistics"):
        normalisation.apply(spec, np.zeros((13, 2, 2), np.float32), np.ones((2, 2), bool), {})


def test_fixed_methods_need_no_statistics(tmp_path, rng):
    scene = write_scene(tmp_path / "scene.tif", synthetic_scene(rng, 16, 16))
    for name in ("legacy-dn10000", "dynamic-world-percentile", "snowcloud-v1"):
        assert normalisation.scene_statistics(normalisation.spec(name), scene) == {}


def test_sigma_clip_statistics_stream_over_valid_pixels_and_scale_to_unit_range(tmp_path, rng):
    values = synthetic_scene(rng, 70, 50)
    values[:, :5, :] = NODATA
    values[:, 30:33, 10:20] = NODATA
    scene = write_scene(tmp_path / "scene.tif", values)
    spec = normalisation.spec("sigma-clip")
    statistics = normalisation.scene_statistics(spec, scene, sub_rows=16)  # strips cross the no-data rows
    valid = np.all(values != NODATA, axis=0)
    bands = values[:13, valid].astype(np.float64)
    mean, std = bands.mean(axis=1), bands.std(axis=1)
    np.testing.assert_allclose(statistics["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(statistics["std"], std, rtol=1e-10)
    assert statistics["valid_pixels"] == valid.sum()
    np.testing.assert_allclose(statistics["low"], np.maximum.reduce([mean - 2 * std, np.zeros(13), bands.min(axis=1)]))
    np.testing.assert_allclose(statistics["high"], np.minimum(mean + 2 * std, bands.max(axis=1)))
    assert statistics["elevation_max"] == values[13, valid].max()
    assert json.loads(json.dumps(statistics)) == statistics

    out = normalisation.apply(spec, values.astype(np.float32), valid, statistics)
    assert out[:13, valid].min() == 0.0 and out[:13, valid].max() == pytest.approx(1.0)
    np.testing.assert_allclose(out[13, valid], values[13, valid] / values[13, valid].max(), rtol=1e-6)


def test_sigma_clip_on_a_scene_without_valid_pixels_names_the_file(tmp_path):
    scene = write_scene(tmp_path / "empty.tif", np.full((14, 8, 8), NODATA, np.int16))
    with pytest.raises(NormalisationError, match=r"empty\.tif: the scene has no valid pixel"):
        normalisation.scene_statistics(normalisation.spec("sigma-clip"), scene)


def test_each_thesis_era_normalises_a_known_pixel_as_thesis_md_computes_it():
    """One pixel, numbers by hand from THESIS.md section 3 (not from the module's constants)."""
    p30 = [1390, 1032, 759, 544, 633, 900, 974, 907, 981, 470, 16, 236, 151]
    offsets = [0.5245, 0.5470, 0.5728, 0.6057, 0.6024, 0.5964, 0.6009, 0.6063, 0.6095, 0.6049, 0.6064, 0.6829, 0.6716]
    pixel = np.array([*p30, 1862.78 + 3913.0], np.float32).reshape(14, 1, 1)
    valid = np.ones((1, 1), bool)
    # eras A/B (913b2a3 .. e40b271): DN / 10000, elevation / 10000
    legacy = normalisation.apply(normalisation.spec("legacy-dn10000"), pixel, valid, {})[:, 0, 0]
    np.testing.assert_allclose(legacy, [*(np.array(p30) / 10000), 0.577578], rtol=1e-5)
    # 1c88144: clip to [low, high], min-max to [0, 1]; elevation / scene maximum
    statistics = {"low": [0.0] * 13, "high": [2 * v for v in p30], "elevation_max": 2 * (1862.78 + 3913.0)}
    sigma = normalisation.apply(normalisation.spec("sigma-clip"), pixel, valid, statistics)[:, 0, 0]
    np.testing.assert_allclose(sigma, [0.5] * 14, rtol=1e-5)
    # dccb618 .. a82e3cd: P30 maps to sigmoid(-1.7346) = 0.15, minus the band's offset; DEM (e - 1862.78) / 3913
    dw = normalisation.apply(normalisation.spec("dynamic-world-percentile"), pixel, valid, {})[:, 0, 0]
    np.testing.assert_allclose(dw, [*(0.15 - np.array(offsets)), 1.0], atol=1e-4)


@pytest.mark.parametrize("name", ["snowcloud-v1", "legacy-dn10000", "dynamic-world-percentile"])
def test_band_values_turn_normalised_bands_back_into_scene_values(name):
    values = np.random.default_rng(0).uniform(2, 12000, (normalisation.N_BANDS, 8, 8)).astype(np.float32)
    stored = normalisation.spec(name)
    normalised = normalisation.apply(stored, values, np.ones((8, 8), bool), {})
    np.testing.assert_allclose(normalisation.band_values(stored, normalised), values, rtol=2e-4, atol=0.05)
    through_float16 = normalisation.band_values(stored, normalised.astype(np.float16))  # as a shard stores them
    np.testing.assert_allclose(through_float16, values, rtol=0.02, atol=20)  # float16: 0.002 reflectance


def test_band_values_refuse_a_normalisation_made_of_per_scene_statistics():
    assert not normalisation.invertible(normalisation.spec("sigma-clip"))
    with pytest.raises(normalisation.NormalisationError, match="sigma-clip cannot be inverted"):
        normalisation.band_values(normalisation.spec("sigma-clip"), np.zeros((normalisation.N_BANDS, 2, 2)))
