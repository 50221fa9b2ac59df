"""Samplers: admissible windows, determinism, grid, class balance and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from snowcloud.sampling import (
    SamplingError,
    class_mask,
    draw_windows,
    sample_origins,
    window_sums,
    windows_with_at_least,
)


def options(**overrides) -> dict:
    base = {
        "method": "random",
        "patches_per_date": 40,
        "seed": 0,
        "stride": None,
        "min_labelled_fraction": 1.0,
        "rare_classes": [3],
        "rare_fraction": 0.5,
    }
    return base | overrides


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    """A 90 x 120 label: background with snow and cloud, a small lake, unlabelled blocks."""
    rng = np.random.default_rng(4)
    label = rng.choice(np.array([0, 1, 2], np.uint8), size=(90, 120))
    label[70:76, 100:108] = 3
    label[:20, :50] = 255
    label[40:45, :] = 255
    label[rng.random(label.shape) < 0.002] = 255
    return label != 255, label


def brute_force_sums(mask: np.ndarray, size: int) -> np.ndarray:
    rows, cols = mask.shape[0] - size + 1, mask.shape[1] - size + 1
    return np.array([[mask[r : r + size, c : c + size].sum() for c in range(cols)] for r in range(rows)])


def window(array: np.ndarray, origin: np.ndarray, size: int) -> np.ndarray:
    return array[origin[0] : origin[0] + size, origin[1] : origin[1] + size]


def test_window_sums_match_a_direct_count_and_strips_change_nothing():
    mask = np.random.default_rng(0).random((23, 31)) > 0.4
    np.testing.assert_array_equal(window_sums(mask, 5), brute_force_sums(mask, 5))
    np.testing.assert_array_equal(windows_with_at_least(mask, 5, 12, strip_rows=4), brute_force_sums(mask, 5) >= 12)


def test_random_draws_distinct_fully_labelled_windows_sorted_and_reproducibly(scene):
    good, label = scene
    origins = sample_origins(good, label, 16, options(), key="32TNS/20210720T101559", source="scene.tif")
    assert origins.shape == (40, 2) and origins.dtype == np.int32
    assert len({tuple(o) for o in origins}) == 40
    assert [tuple(o) for o in origins] == sorted(tuple(o) for o in origins)
    assert all(window(good, o, 16).all() for o in origins)
    again = sample_origins(good, label, 16, options(), key="32TNS/20210720T101559", source="scene.tif")
    np.testing.assert_array_equal(origins, again)
    other_date = sample_origins(good, label, 16, options(), key="32TNS/20210721T101559", source="scene.tif")
    other_seed = sample_origins(good, label, 16, options(seed=1), key="32TNS/20210720T101559", source="scene.tif")
    assert not np.array_equal(origins, other_date) and not np.array_equal(origins, other_seed)


def test_random_honours_a_partial_labelled_fraction(scene):
    good, label = scene
    origins = sample_origins(good, label, 24, options(min_labelled_fraction=0.6), key="k", source="s")
    fractions = [window(good, o, 24).mean() for o in origins]
    assert min(fractions) >= 0.6 and min(fractions) < 1.0


def test_no_admissible_window_is_an_error_naming_the_scene_and_the_best_fraction(scene):
    good, label = scene
    good[::10, ::10] = False
    with pytest.raises(SamplingError, match=r"scene\.tif: no 32 x 32 window has 100% labelled.*the best has 99\.\d%"):
        sample_origins(good, label, 32, options(), key="k", source="scene.tif")
    with pytest.raises(SamplingError, match=r"tiny\.tif: the scene \(90 x 120\) is smaller than one 128 x 128 patch"):
        sample_origins(good, label, 128, options(), key="k", source="tiny.tif")


def test_grid_takes_every_admissible_window_on_the_stride(scene):
    good, label = scene
    origins = sample_origins(good, label, 16, options(method="grid", stride=8), key="k", source="s")
    sums = brute_force_sums(good, 16)
    expected = [(r, c) for r in range(0, 75, 8) for c in range(0, 105, 8) if sums[r, c] == 256]
    assert [tuple(o) for o in origins] == expected
    default = sample_origins(good, label, 16, options(method="grid"), key="k", source="s")
    assert {tuple(o) for o in default} == {(r, c) for r, c in expected if r % 16 == 0 and c % 16 == 0}


def test_class_balanced_oversamples_windows_holding_the_rare_class(scene):
    good, label = scene
    water = lambda origins: np.mean([(window(label, o, 16) == 3).any() for o in origins])  # noqa: E731
    balanced = sample_origins(good, label, 16, options(method="class-balanced"), key="k", source="s")
    uniform = sample_origins(good, label, 16, options(), key="k", source="s")
    assert len(balanced) == 40 and len({tuple(o) for o in balanced}) == 40
    assert water(balanced) >= 0.5 and water(uniform) < 0.2
    assert all(window(good, o, 16).all() for o in balanced)


def test_class_balanced_without_the_rare_class_falls_back_to_random(scene):
    good, label = scene
    label[label == 3] = 0
    balanced = sample_origins(good, label, 16, options(method="class-balanced"), key="k", source="s")
    np.testing.assert_array_equal(balanced, sample_origins(good, label, 16, options(), key="k", source="s"))


def test_fewer_admissible_windows_than_patches_draws_with_replacement(caplog):
    admissible = np.zeros((5, 5), bool)
    admissible[1, 2] = admissible[3, 0] = True
    flat = draw_windows(admissible, 6, np.random.default_rng(0))
    assert len(flat) == 6 and set(flat) == {7, 15}
    assert "drawing with replacement" in caplog.text
    distinct = draw_windows(admissible, 1, np.random.default_rng(0), exclude=np.array([7]))
    assert list(distinct) == [15]


def test_class_mask_is_membership_in_the_classes(scene):
    _, label = scene
    np.testing.assert_array_equal(class_mask(label, [3, 255]), np.isin(label, [3, 255]))
