"""HDF5 shards: round trip against the scene, attributes, class counts, determinism, atomic writes, errors."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch
from helpers.rasters import synthetic_scene, write_label, write_scene
from helpers.training_shards import shard_options

from snowcloud import normalisation, shards
from snowcloud.labels import LabelError
from snowcloud.loader import ShardDataset
from snowcloud.provenance import file_identity
from snowcloud.scene import NODATA, SceneError
from snowcloud.shards import ShardError, build_shard, patch_batches, read_attributes

TILE, DATE = "32TNS", "20210720T101559"


def make_inputs(root: Path, seed: int = 0, height: int = 80, width: int = 72) -> tuple[Path, Path]:
    """A scene raster with an invalid corner and a label with an unlabelled block, as the workflow lays them out."""
    rng = np.random.default_rng(seed)
    values = synthetic_scene(rng, height, width)
    values[:, :12, :20] = NODATA
    scene = write_scene(root / "results" / "scenes" / TILE / f"{DATE}.tif", values)
    label = rng.choice(np.array([0, 1, 2], np.uint8), size=(height, width))
    label[50:56, 40:50] = 3
    label[60:, :10] = 255
    return scene, write_label(root / "labels" / f"T{TILE}" / f"{DATE}.tif", label)


def shard_path(root: Path, dataset: str = "demo") -> Path:
    return root / "results" / "shards" / dataset / TILE / f"{DATE}.h5"


def read_scene(scene: Path) -> np.ndarray:
    with rasterio.open(scene) as src:
        return src.read()


def read_labels(label: Path) -> np.ndarray:
    with rasterio.open(label) as src:
        return src.read(1)


@pytest.mark.parametrize("name", normalisation.names())
def test_patches_are_the_normalised_scene_windows_at_their_origins(tmp_path, name):
    scene, label = make_inputs(tmp_path)
    output = shard_path(tmp_path)
    build_shard(scene, label, output, "demo", shard_options(normalisation=name))
    values, classes = read_scene(scene), read_labels(label)
    valid = np.all(values != NODATA, axis=0)
    classes[~valid] = 255
    attributes = read_attributes(output)
    spec, statistics = attributes["normalisation"], attributes["normalisation_statistics"]
    assert spec == normalisation.spec(name)
    assert statistics == normalisation.scene_statistics(spec, scene)
    with h5py.File(output, "r") as shard:
        image, labels, origins = shard["image"], shard["label"], shard["origin"][:]
        assert image.dtype == np.float16 and image.shape == (30, 14, 16, 16) and image.chunks == (1, 14, 16, 16)
        assert labels.dtype == np.uint8 and labels.shape == (30, 16, 16) and origins.dtype == np.int32
        for index, (row, col) in enumerate(origins):
            window = np.s_[row : row + 16, col : col + 16]
            expected = normalisation.apply(spec, values[:, *window].astype(np.float32), valid[window], statistics)
            np.testing.assert_array_equal(image[index], expected.astype(np.float16))
            np.testing.assert_array_equal(labels[index], classes[window])
            assert (labels[index] != 255).all(), "random with min_labelled_fraction 1 takes fully labelled windows"


def test_attributes_record_the_inputs_options_and_direct_class_counts(tmp_path):
    scene, label = make_inputs(tmp_path)
    output = shard_path(tmp_path)
    options = shard_options(sampler=shard_options()["sampler"] | {"min_labelled_fraction": 0.5})
    build_shard(scene, label, output, "demo", options)
    attributes = read_attributes(output)
    assert attributes["tile"] == TILE and attributes["date"] == DATE and attributes["dataset"] == "demo"
    assert attributes["bands"][-1] == "ELEVATION" and len(attributes["bands"]) == 14
    assert attributes["patch_size"] == 16 and attributes["sampler"] == options["sampler"]
    assert attributes["patches"] == 30 and attributes["scene_shape"] == [80, 72]
    assert attributes["inputs"] == {"scene": file_identity(scene), "label": [file_identity(label)]}
    with h5py.File(output, "r") as shard:
        labels, counts, fractions = shard["label"][:], shard["class_counts"][:], shard["class_fraction"][:]
    values, frequencies = np.unique(labels, return_counts=True)
    direct = {str(v): int(f) for v, f in zip(values, frequencies)}
    assert attributes["class_pixel_counts"] == {key: direct.get(key, 0) for key in ("0", "1", "2", "3", "4", "255")}
    assert attributes["class_pixel_counts"]["255"] > 0, "half-labelled windows were allowed"
    for patch, count, fraction in zip(labels, counts, fractions):
        assert list(count) == [int((patch == c).sum()) for c in (0, 1, 2, 3, 4, 255)]  # 4: thin_cloud, ignored
        np.testing.assert_allclose(fraction, count[:4] / count[:4].sum(), rtol=1e-6)
    np.testing.assert_allclose(attributes["class_fraction_mean"], fractions.astype(np.float64).mean(axis=0), rtol=1e-6)


def test_without_elevation_the_shard_has_the_13_bands(tmp_path):
    scene, label = make_inputs(tmp_path)
    build_shard(scene, label, shard_path(tmp_path), "demo", shard_options(elevation=False))
    with h5py.File(shard_path(tmp_path), "r") as shard:
        assert shard["image"].shape[1] == 13
    assert "ELEVATION" not in read_attributes(shard_path(tmp_path))["bands"]


def digest(path: Path, name: str) -> str:
    with h5py.File(path, "r") as shard:
        return hashlib.blake2b(np.ascontiguousarray(shard[name][:]).tobytes()).hexdigest()


def test_the_same_inputs_and_options_give_byte_identical_datasets(tmp_path):
    scene, label = make_inputs(tmp_path)
    options = shard_options(sampler=shard_options()["sampler"] | {"method": "class-balanced"})
    first, second, reseeded = (tmp_path / name / TILE / f"{DATE}.h5" for name in ("a", "b", "c"))
    build_shard(scene, label, first, "demo", options)
    build_shard(scene, label, second, "demo", options)
    build_shard(scene, label, reseeded, "demo", options | {"sampler": options["sampler"] | {"seed": 4}})
    for name in ("image", "label", "origin", "class_counts"):
        assert digest(first, name) == digest(second, name)
    assert digest(first, "origin") != digest(reseeded, "origin")


def filter_ids(dataset: h5py.Dataset) -> set[int]:
    plist = dataset.id.get_create_plist()
    return {plist.get_filter(index)[0] for index in range(plist.get_nfilters())}


# HDF5 filter ids: 1 deflate (gzip), 2 shuffle, 32000 lzf, 32001 Blosc.
@pytest.mark.parametrize(("compression", "filters"), [("blosc-zstd", {32001}), ("gzip", {2, 1}), ("lzf", {2, 32000})])
def test_a_compressed_shard_holds_the_raw_shards_patches_and_the_loader_reads_them(tmp_path, compression, filters):
    scene, label = make_inputs(tmp_path)
    raw, packed = (tmp_path / name / TILE / f"{DATE}.h5" for name in ("raw", compression))
    build_shard(scene, label, raw, "demo", shard_options())
    build_shard(scene, label, packed, "demo", shard_options(compression=compression))
    with h5py.File(raw, "r") as plain, h5py.File(packed, "r") as filtered:
        for name in ("image", "label"):
            assert filter_ids(plain[name]) == set() and filter_ids(filtered[name]) == filters
            assert filtered[name].chunks == plain[name].chunks
            np.testing.assert_array_equal(filtered[name][:], plain[name][:])
    keys = list(range(30))
    images, labels = ShardDataset([(packed, None)]).read_batch(keys)
    expected_images, expected_labels = ShardDataset([(raw, None)]).read_batch(keys)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_row_blocks_and_batches_do_not_change_the_patches(tmp_path):
    scene, _ = make_inputs(tmp_path, height=120)
    origins = np.array([[0, 0], [3, 50], [3, 51], [40, 7], [41, 30], [90, 2], [104, 56]], dtype=np.int32)
    spec = normalisation.spec("dynamic-world-percentile")
    with rasterio.open(scene) as src:
        small = list(patch_batches(src, normalisation.Normaliser(spec, {}), 14, origins, 16, block_rows=5, batch=2))
        whole = list(
            patch_batches(src, normalisation.Normaliser(spec, {}), 14, origins, 16, block_rows=1000, batch=100)
        )
    assert [start for start, _ in small] == [0, 2, 3, 5, 6] and len(whole) == 1
    np.testing.assert_array_equal(np.concatenate([images for _, images in small]), whole[0][1])


def test_a_failing_build_leaves_nothing_behind(tmp_path, monkeypatch):
    scene, label = make_inputs(tmp_path, height=200)
    calls = []

    def fail_on_second_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(*args, **kwargs)

    original = normalisation.Normaliser.__call__
    monkeypatch.setattr(normalisation.Normaliser, "__call__", fail_on_second_block)
    monkeypatch.setattr(shards, "BLOCK_ROWS", 8)
    with pytest.raises(RuntimeError, match="disk full"):
        build_shard(scene, label, shard_path(tmp_path), "demo", shard_options())
    assert list(shard_path(tmp_path).parent.iterdir()) == []


KILLED_BUILD = """
import sys, time
from snowcloud import normalisation, shards
original = normalisation.Normaliser.__call__
calls = []
def slow(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        print("writing", flush=True)
        time.sleep(60)
    return original(*args, **kwargs)
normalisation.Normaliser.__call__ = slow
shards.BLOCK_ROWS = 8
shards.build_shard(sys.argv[1], sys.argv[2], sys.argv[3], "demo", eval(sys.argv[4]))
"""


def test_a_killed_shard_job_leaves_no_file_at_the_final_path(tmp_path):
    scene, label = make_inputs(tmp_path, height=200)
    output = shard_path(tmp_path)
    command = [sys.executable, "-c", KILLED_BUILD, str(scene), str(label), str(output), repr(shard_options())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        temporary = [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.tmp-")]
        assert temporary and temporary[0].stat().st_size > 0, "the shard is being written under a temporary name"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert not output.exists()


def test_a_thesis_label_folder_is_identified_by_both_files(tmp_path):
    scene, label = make_inputs(tmp_path)
    classes = read_labels(label)
    folder = tmp_path / "masks" / DATE
    write_label(folder / "mask.jp2", np.where(classes == 255, 0, classes).astype(np.uint8))
    write_label(folder / "mask_coverage.jp2", (classes != 255).astype(np.uint8))
    build_shard(scene, folder, shard_path(tmp_path), "demo", shard_options())
    inputs = read_attributes(shard_path(tmp_path))["inputs"]["label"]
    assert [Path(entry["path"]).name for entry in inputs] == ["mask.jp2", "mask_coverage.jp2"]
    with h5py.File(shard_path(tmp_path), "r") as shard:
        for patch, (row, col) in zip(shard["label"][:], shard["origin"][:]):
            np.testing.assert_array_equal(patch, classes[row : row + 16, col : col + 16])


def test_bad_inputs_are_errors_naming_the_file(tmp_path):
    scene, label = make_inputs(tmp_path)
    empty = write_scene(tmp_path / "empty" / TILE / f"{DATE}.tif", np.full((14, 40, 40), NODATA, np.int16))
    with pytest.raises(ShardError, match=r"empty.*\.tif: the scene has no valid pixel"):
        build_shard(empty, label, shard_path(tmp_path), "demo", shard_options())
    flat = write_scene(
        tmp_path / "flat" / TILE / f"{DATE}.tif", synthetic_scene(np.random.default_rng(1), 80, 72, False)
    )
    with pytest.raises(SceneError, match=r"flat.*no ELEVATION band"):
        build_shard(flat, label, shard_path(tmp_path), "demo", shard_options())
    other_crs = write_label(tmp_path / "utm33.tif", read_labels(label), crs="EPSG:32633")
    with pytest.raises(LabelError, match=r"utm33\.tif: label CRS"):
        build_shard(scene, other_crs, shard_path(tmp_path), "demo", shard_options())
    assert not shard_path(tmp_path).exists()
