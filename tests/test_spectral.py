"""The reflectance perturbations that the spectral augmentation and the robustness benchmark share."""

import numpy as np
import pytest

from snowcloud.bands import BANDS
from snowcloud.spectral import (
    Perturbation,
    SpectralRanges,
    add_noise,
    blur,
    calibrate,
    gaussian_kernel,
    haze_profile,
    perturb,
)


def _scene(size=40, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 0.8, (len(BANDS), size, size)).astype(np.float32)


def test_the_gaussian_kernel_is_the_psf_integrated_over_pixels_and_sums_to_one():
    for sigma in (1.0, 2.5):
        kernel = gaussian_kernel(sigma)
        offsets = np.arange(len(kernel)) - len(kernel) // 2
        assert kernel.sum() == pytest.approx(1, abs=1e-6)
        # binned into pixels, the variance grows by a pixel's 1/12 (Sheppard), less the 3-sigma cut
        assert (kernel * offsets**2).sum() == pytest.approx(sigma**2 + 1 / 12, rel=0.05)
    narrow = gaussian_kernel(0.3)  # a third of a pixel still puts 4.8 % of the light into each neighbour
    assert len(narrow) == 3 and narrow[0] == narrow[2] == pytest.approx(0.0478, abs=0.001)


def test_blur_keeps_a_uniform_scene_uniform_next_to_no_data_and_leaves_no_data_alone():
    reflectance = np.full((2, 20, 20), 0.3, np.float32)
    reflectance[:, :, 15:] = -5.0  # what a no-data pixel may hold
    valid = np.ones((20, 20), bool)
    valid[:, 15:] = False
    out = blur(reflectance, 1.5, valid)
    np.testing.assert_allclose(out[:, valid], 0.3, rtol=1e-6)
    np.testing.assert_array_equal(out[:, ~valid], -5.0)
    edge = blur(np.full((1, 10, 10), 0.3, np.float32), 1.0)  # the array's edges do not darken either
    np.testing.assert_allclose(edge, 0.3, rtol=1e-6)


def test_blur_smooths_an_edge_over_a_few_sigma():
    step = np.zeros((1, 1, 40), np.float32)
    step[..., 20:] = 1.0
    out = blur(step, 2.0)[0, 0]
    assert out[19] == pytest.approx(0.5 - 0.5 * 0.197, abs=0.02)  # about the Gaussian's CDF at -0.5 px / 2 px
    assert out[10] < 1e-3 and out[30] > 1 - 1e-3
    np.testing.assert_array_equal(blur(step, 0.0), step)


def test_haze_is_strongest_in_the_blue_and_spares_b10():
    profile = dict(zip(BANDS, haze_profile(BANDS, 0.04, 1.3)))
    assert profile["B02"] == pytest.approx(0.04 * (492.4 / 490) ** -1.3, rel=1e-5)
    assert profile["B01"] > profile["B02"] > profile["B03"] > profile["B04"] > profile["B08"] > profile["B12"] > 0
    assert profile["B10"] == 0
    assert haze_profile(BANDS, 0.04, 4.0)[BANDS.index("B12")] < haze_profile(BANDS, 0.04, 1.0)[BANDS.index("B12")]


def test_calibration_and_noise():
    scene = _scene()
    gains = np.linspace(0.9, 1.1, len(BANDS))
    out = calibrate(scene, gains, 0.01)
    np.testing.assert_allclose(out, scene * gains[:, None, None] + 0.01, rtol=1e-6)
    noisy = add_noise(scene, 0.005, np.random.default_rng(1))
    assert (noisy - scene).std() == pytest.approx(0.005, rel=0.05)
    assert abs((noisy - scene).mean()) < 3e-4


def test_perturb_applies_haze_then_calibration_and_draws_noise_from_its_generator():
    scene = _scene()
    perturbation = Perturbation(gains=1.1, offsets=-0.01, haze=0.02, haze_exponent=2.0)
    h = haze_profile(BANDS, 0.02, 2.0)[:, None, None]
    out = perturb(scene, BANDS, perturbation, np.random.default_rng(0))
    np.testing.assert_allclose(out, (scene * (1 - h) + h) * 1.1 - 0.01, rtol=1e-5, atol=1e-6)
    noisy = Perturbation(noise_std=0.01)
    first = perturb(scene, BANDS, noisy, np.random.default_rng(4))
    np.testing.assert_array_equal(first, perturb(scene, BANDS, noisy, np.random.default_rng(4)))
    with pytest.raises(ValueError, match="band names"):
        perturb(scene, BANDS[:3], perturbation, np.random.default_rng(0))


def test_draws_stay_in_their_ranges():
    ranges = SpectralRanges()
    for seed in range(200):
        drawn = ranges.draw(np.random.default_rng(seed), len(BANDS))
        assert all(0.8 * 0.95 <= gain <= 1.2 * 1.05 for gain in drawn.gains)
        assert all(-0.02 <= offset <= 0.02 for offset in drawn.offsets)
        assert 0 <= drawn.haze <= 0.04 and 1 <= drawn.haze_exponent <= 4
        assert 0 <= drawn.blur_sigma <= 1 and 0 <= drawn.noise_std <= 0.005
    fixed = SpectralRanges.from_options({"gain": [1.2, 1.2], "band_gain": [1, 1]}).draw(np.random.default_rng(0), 13)
    assert fixed.gains == pytest.approx([1.2] * 13)
