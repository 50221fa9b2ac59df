"""s2cloudless on scene rasters: strips equal the whole-scene result, working resolution, validity, settings."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.rasters import synthetic_scene, write_scene
from s2cloudless import S2PixelCloudDetector

from snowcloud import cloudprob
from snowcloud.scene import NODATA, SceneError


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 70 x 52 scene with bright blobs (cloud-like in every band) and a no-data corner."""
    values = synthetic_scene(np.random.default_rng(3), 70, 52)
    values[:, :9, :11] = NODATA
    return tmp_path_factory.mktemp("cloudprob") / "32TNS" / "20220201T102209.tif", values


def whole_scene_s2cloudless(values: np.ndarray, **settings) -> tuple[np.ndarray, np.ndarray]:
    """s2cloudless run directly on the whole scene as the thesis did (DN / 10000, all 13 bands)."""
    reflectance, valid = cloudprob.scene_reflectance(values[:13], NODATA)
    detector = S2PixelCloudDetector(all_bands=True, **settings)
    probability = detector.get_cloud_probability_maps(reflectance[None])[0]
    probability[~valid] = 0
    return probability, detector.get_mask_from_prob(probability[None])[0].astype(bool) & valid


def gather(strips) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    strips = list(strips)
    rows = [strip.row for strip in strips]
    return (
        np.concatenate([s.probability for s in strips]),
        np.concatenate([s.mask for s in strips]),
        np.concatenate([s.valid for s in strips]),
        rows,
    )


def test_strips_with_halo_equal_s2cloudless_on_the_whole_scene_with_the_thesis_settings(scene):
    path, values = scene
    write_scene(path, values)
    probability, mask, valid, rows = gather(cloudprob.cloud_strips(path, strip_rows=16))
    expected_probability, expected_mask = whole_scene_s2cloudless(
        values, threshold=0.4, average_over=4, dilation_size=2
    )
    assert rows == [0, 16, 32, 48, 64]
    assert probability.dtype == np.float32 and probability.shape == (70, 52)
    np.testing.assert_allclose(probability, expected_probability, atol=1e-6)
    np.testing.assert_array_equal(mask, expected_mask)
    assert 0.05 < mask[valid].mean() < 0.95  # the scene has clouds and clear pixels
    assert not valid[:9, :11].any() and valid[9:].all()
    assert not mask[:9, :11].any() and (probability[:9, :11] == 0).all()


def test_settings_are_arguments(scene):
    path, values = scene
    write_scene(path, values)
    _, strict, _, _ = gather(cloudprob.cloud_strips(path, threshold=0.99, average_over=0, dilation_size=0))
    _, loose, _, _ = gather(cloudprob.cloud_strips(path, threshold=0.01, average_over=1, dilation_size=3))
    _, expected = whole_scene_s2cloudless(values, threshold=0.01, average_over=1, dilation_size=3)
    np.testing.assert_array_equal(loose, expected)
    assert strict.sum() < loose.sum()


def test_a_coarser_resolution_averages_blocks_and_repeats_them_onto_the_scene_grid(scene):
    path, values = scene
    write_scene(path, values)
    probability, mask, valid, rows = gather(cloudprob.cloud_strips(path, resolution_m=20, strip_rows=20))
    assert probability.shape == mask.shape == (70, 52)
    assert rows == [0, 20, 40, 60]
    # Each 2 x 2 block holds one value; the block's probability is s2cloudless on the block's mean reflectance.
    reflectance, scene_valid = cloudprob.scene_reflectance(values[:13], NODATA)
    mean, _ = cloudprob.block_mean(reflectance[20:22, 30:32], scene_valid[20:22, 30:32], 2)
    np.testing.assert_allclose(probability[20:22, 30:32], cloudprob.cloud_probability(mean)[0, 0], atol=1e-6)
    np.testing.assert_array_equal(valid, scene_valid)
    assert not mask[~valid].any()


def test_a_resolution_that_is_not_a_multiple_of_the_pixel_size_is_refused(scene):
    path, values = scene
    write_scene(path, values)
    with pytest.raises(cloudprob.CloudProbabilityError, match="resolution_m = 15"):
        next(cloudprob.cloud_strips(path, resolution_m=15))


def test_a_scene_without_the_bands_names_them(tmp_path):
    path = write_scene(tmp_path / "s.tif", synthetic_scene(np.random.default_rng(1), 8, 8)[:5])
    with pytest.raises(SceneError, match="B06, B07.* s2cloudless"):
        next(cloudprob.cloud_strips(path))
