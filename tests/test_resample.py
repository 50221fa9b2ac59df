"""Upsampling of the 20 m and 60 m bands (snowcloud.resample): against the definition, in row chunks, bounded."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.references import reference_upsample

from snowcloud import resample


@pytest.mark.parametrize(
    ("method", "a", "factor"), [("nearest", -0.5, 2), ("bilinear", -0.5, 6), ("cubic", -0.5, 2), ("cubic", -0.75, 6)]
)
def test_upsampling_equals_the_definition_pixel_by_pixel(method, a, factor):
    native = np.random.default_rng(3).integers(0, 10000, (7, 7)).astype(np.float32)
    padded = np.pad(native, resample.MARGIN, mode="edge")  # the border replicated, as the preprocess stage does
    out = np.empty((7 * factor, 7 * factor), dtype=np.float32)
    taps = resample.phase_taps(factor, method, a)
    resample.upsample(
        padded, factor, taps, None, 3, lambda first, rows: out.__setitem__(slice(first, first + len(rows)), rows)
    )
    expected = reference_upsample(native, factor, method, a)
    np.testing.assert_allclose(np.rint(out), expected, atol=1)  # float32 against float64: ties may round apart
    assert np.mean(np.rint(out) == expected) > 0.99


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
        resample.upsample(
            native,
            2,
            taps,
            valid,
            rows_at_once,
            lambda first, rows: out.__setitem__(slice(first, first + len(rows)), rows),
        )
        return out

    whole = upsampled(40)
    valid_output = np.repeat(np.repeat(valid[2:-2, 2:-2], 2, axis=0), 2, axis=1)
    assert not np.isnan(whole).any() and whole[valid_output].min() > -10000  # no-data input never leaks
    for rows_at_once in (1, 7, 16):
        np.testing.assert_array_equal(upsampled(rows_at_once), whole)


@pytest.mark.parametrize(
    ("method", "a", "factor"), [("bilinear", -0.5, 2), ("bilinear", -0.5, 6), ("cubic", -0.5, 2), ("cubic", -0.75, 6)]
)
def test_gain_bounds_every_upsampled_value_also_beside_no_data(method, a, factor):
    rng = np.random.default_rng(factor)
    native = rng.choice(np.float32([-30000, 30000]), (24 + 4, 24 + 4))  # extremes side by side: the largest overshoot
    valid = rng.random(native.shape) < 0.8
    taps = resample.phase_taps(factor, method, a)
    out = np.empty((24 * factor, 24 * factor), dtype=np.float32)
    for mask in (None, valid):
        resample.upsample(
            native, factor, taps, mask, 5, lambda first, rows: out.__setitem__(slice(first, first + len(rows)), rows)
        )
        assert np.abs(out).max() <= 30000 * resample.gain(taps) * (1 + 1e-6)
    if method == "cubic":
        assert resample.gain(taps) > 1 and np.abs(out).max() > 30000  # cubic overshoots: the bound is not idle
    else:
        assert resample.gain(taps) == pytest.approx(1)
