"""Label masks onto the scene grid: same grid, coarser aligned grids, thesis folders, and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.rasters import ORIGIN, synthetic_scene, write_label, write_scene
from rasterio.windows import Window

from snowcloud.counting import bincount_in_chunks
from snowcloud.labels import (
    CLASSES,
    DEFAULT_CLASS_SET,
    ClassSet,
    ClassSetError,
    LabelError,
    read_encoded,
    read_label,
    recorded_classes,
)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif", synthetic_scene(np.random.default_rng(0), 24, 30))


@pytest.fixture
def classes() -> np.ndarray:
    return np.random.default_rng(1).choice(np.array([0, 1, 2, 3, 255], np.uint8), size=(24, 30))


def test_a_label_on_the_scene_grid_reads_back_unchanged(tmp_path, scene, classes):
    label = write_label(tmp_path / "label.tif", classes)
    np.testing.assert_array_equal(read_label(label, scene, class_set=DEFAULT_CLASS_SET), classes)
    np.testing.assert_array_equal(
        read_label(label, scene, Window(3, 5, 10, 7), class_set=DEFAULT_CLASS_SET), classes[5:12, 3:13]
    )


def test_a_coarser_aligned_label_is_resampled_nearest_and_255_outside_its_extent(tmp_path, scene):
    coarse = np.random.default_rng(2).choice(np.array([0, 1, 2, 3], np.uint8), size=(8, 10))
    # 30 m pixels starting 2 scene pixels right of and 4 below the scene's corner
    origin = (ORIGIN[0] + 20, ORIGIN[1] - 40)
    label = write_label(tmp_path / "coarse.tif", coarse, resolution=30, origin=origin)
    expected = np.full((24, 30), 255, np.uint8)
    expected[4:24, 2:30] = np.repeat(np.repeat(coarse, 3, axis=0), 3, axis=1)[:20, :28]
    np.testing.assert_array_equal(read_label(label, scene, class_set=DEFAULT_CLASS_SET), expected)
    np.testing.assert_array_equal(
        read_label(label, scene, Window(0, 10, 7, 9), class_set=DEFAULT_CLASS_SET), expected[10:19, 0:7]
    )
    np.testing.assert_array_equal(
        read_label(label, scene, Window(0, 0, 2, 3), class_set=DEFAULT_CLASS_SET), np.full((3, 2), 255)
    )


def test_another_crs_a_shift_a_finer_grid_or_another_dtype_are_errors_naming_the_file(tmp_path, scene, classes):
    cases = {
        "utm33.tif": (dict(crs="EPSG:32633"), "CRS"),
        "shifted.tif": (dict(origin=(ORIGIN[0] + 5, ORIGIN[1])), "not aligned.*0.500 scene pixels along the columns"),
        "fine.tif": (dict(resolution=5), "not a whole multiple"),
        "odd.tif": (dict(resolution=15), "not a whole multiple"),
    }
    for name, (options, message) in cases.items():
        label = write_label(tmp_path / name, classes, **options)
        with pytest.raises(LabelError, match=rf"{name}: .*{message}"):
            read_label(label, scene, class_set=DEFAULT_CLASS_SET)
    wide = write_label(tmp_path / "uint16.tif", classes.astype(np.uint16))
    with pytest.raises(LabelError, match=r"uint16\.tif: a label mask must be uint8"):
        read_label(wide, scene, class_set=DEFAULT_CLASS_SET)
    with pytest.raises(LabelError, match="label mask not found"):
        read_label(tmp_path / "missing.tif", scene, class_set=DEFAULT_CLASS_SET)


def test_unexpected_class_values_are_an_error(tmp_path, scene, classes):
    classes[3, 3] = 7
    label = write_label(tmp_path / "seven.tif", classes)
    with pytest.raises(LabelError, match=r"seven\.tif: unexpected label values \[7\]"):
        read_label(label, scene, class_set=DEFAULT_CLASS_SET)


@pytest.mark.parametrize("driver", ["GTiff", "JP2OpenJPEG"])
def test_a_thesis_folder_uses_coverage_and_drops_semi_transparent_clouds(tmp_path, scene, driver):
    """The thesis wrote GeoTIFFs named .jp2; real (lossless) JPEG 2000 is read the same way."""
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 5, size=(24, 30)).astype(np.uint8)
    coverage = (rng.random((24, 30)) > 0.3).astype(np.uint8)
    mask[~coverage.astype(bool)] = 9  # anything outside the coverage is ignored
    options = {"QUALITY": 100, "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}
    folder = tmp_path / "20210720T101559"
    write_label(folder / "mask.jp2", mask, driver=driver, **options)
    write_label(folder / "mask_coverage.jp2", coverage, driver=driver, **options)
    expected = np.where((coverage == 1) & (mask != 4), mask, 255)
    np.testing.assert_array_equal(read_label(folder, scene, class_set=DEFAULT_CLASS_SET), expected)


def test_a_thesis_folder_without_its_coverage_is_an_error(tmp_path, scene, classes):
    folder = tmp_path / "20210720T101559"
    write_label(folder / "mask.jp2", classes)
    with pytest.raises(LabelError, match=r"needs mask\.jp2 and mask_coverage\.jp2; missing \['mask_coverage\.jp2'\]"):
        read_label(folder, scene, class_set=DEFAULT_CLASS_SET)


def test_counts_in_chunks_equal_a_bincount():
    values = np.random.default_rng(5).integers(0, 256, size=(37, 11)).astype(np.uint8)
    np.testing.assert_array_equal(bincount_in_chunks(values, 256, chunk=7), np.bincount(values.ravel(), minlength=256))


ERA_A = {
    "classes": {"snow": [1], "cloud": [2], "water": [3], "thin_cloud": [4]},
    "ignored_classes": {"background": [0]},
}


def test_a_class_set_maps_label_values_onto_its_classes_and_its_ignored_classes(tmp_path, scene):
    values = np.random.default_rng(6).choice(np.array([0, 1, 2, 3, 4, 255], np.uint8), size=(24, 30))
    label = write_label(tmp_path / "thin.tif", values)
    era_a = ClassSet.from_options(ERA_A)
    assert era_a.names == ("snow", "cloud", "water", "thin_cloud") and era_a.encoded_names[-1] == "background"
    encoded = np.choose(np.searchsorted([0, 1, 2, 3, 4, 255], values), [4, 0, 1, 2, 3, 255]).astype(np.uint8)
    np.testing.assert_array_equal(read_encoded(label, scene, class_set=era_a), encoded)
    np.testing.assert_array_equal(read_label(label, scene, class_set=era_a), np.where(encoded == 4, 255, encoded))
    # the default: thin clouds (4) encoded as the ignored class thin_cloud, not labelled for training
    np.testing.assert_array_equal(
        read_label(label, scene, class_set=DEFAULT_CLASS_SET), np.where(values == 4, 255, values)
    )
    merged = ClassSet.from_options({"classes": {"snow": [1], "cloud": [2, 4]}, "ignored_classes": {}})
    clouds = write_label(tmp_path / "clouds.tif", np.where(np.isin(values, [0, 3]), 255, values).astype(np.uint8))
    np.testing.assert_array_equal(read_label(clouds, scene, class_set=merged)[values == 4], 1)  # thin is cloud
    with pytest.raises(LabelError, match=r"thin\.tif: unexpected label values \[0, 3\].*classes and ignored_classes"):
        read_label(label, scene, class_set=merged)


def test_a_class_set_refuses_a_value_or_a_name_used_twice_naming_the_key():
    with pytest.raises(ClassSetError, match="datasets.x: label value 4 belongs to both cloud and thin_cloud"):
        ClassSet.from_options({"classes": {"cloud": [2, 4]}}, "datasets.x")  # the default ignores 4 as thin_cloud
    with pytest.raises(ClassSetError, match=r"datasets.x.classes / ignored_classes: class names \['snow'\] are used"):
        ClassSet.from_options({"classes": {"snow": [1]}, "ignored_classes": {"snow": [7]}}, "datasets.x")


def test_recorded_classes_are_read_from_each_kind_of_file_and_never_guessed_for_a_class_set_without_names():
    assert recorded_classes({"classes": ["snow", "cloud"]}, "model.pt") == ["snow", "cloud"]
    assert recorded_classes({"classes": '["snow", "cloud"]', "CLASS_0": "snow"}, "mask.tif") == ["snow", "cloud"]
    assert recorded_classes({"bands": []}, "old.pt") == list(CLASSES)  # written before class sets: the thesis's
    with pytest.raises(ClassSetError, match="stats.json records a class set but no class names"):
        recorded_classes({"class_set": {"classes": {"snow": [1]}}}, "stats.json")
