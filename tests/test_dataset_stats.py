"""Dataset stats: class distributions, weight formulas, the date and patch splits, digest, plot, load_split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers.training_shards import build_real_shard, stats_options

from snowcloud.dataset_stats import (
    DatasetError,
    build_dataset_stats,
    class_weights,
    digest,
    distribution,
    load_split,
    patch_split,
    validation_dates,
)
from snowcloud.labels import DEFAULT_CLASS_SET
from snowcloud.loader import ShardDataset

THESIS_F = [0.4132, 0.31163, 0.26706, 0.00812]  # e40b271


@pytest.fixture(scope="module")
def shard_paths(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("dataset")
    scenes = [
        ("32TNS", "20210111T102309", 1),
        ("32TNS", "20210720T101559", 2),
        ("32TMS", "20210720T101559", 3),
        ("32TNS", "20211008T101829", 4),
    ]
    return [build_real_shard(root, tile, date, seed, patches=10 + seed) for tile, date, seed in scenes]


def read_labels(path: str) -> np.ndarray:
    with h5py.File(path, "r") as shard:
        return shard["label"][:]


def test_weight_formulas_on_the_thesis_fractions():
    inverse_ratio, _ = class_weights(THESIS_F, "inverse-ratio")
    np.testing.assert_allclose(inverse_ratio, [1.420, 2.209, 2.745, 122.15], atol=6e-3)
    square_root, _ = class_weights(THESIS_F, "sqrt-inverse-ratio")
    np.testing.assert_allclose(square_root, [1.192, 1.486, 1.657, 11.05], atol=6e-3)
    np.testing.assert_allclose(class_weights(THESIS_F, "inverse")[0], 1 / np.array(THESIS_F))
    median = (0.31163 + 0.26706) / 2
    np.testing.assert_allclose(class_weights(THESIS_F, "median-frequency")[0], median / np.array(THESIS_F))


def test_an_absent_class_gets_the_rarest_present_weight_and_no_labels_is_an_error():
    weights, absent = class_weights([0.5, 0.3, 0.2, 0.0], "inverse")
    assert absent == [3] and all(math.isfinite(w) for w in weights)
    assert weights == pytest.approx([2.0, 1 / 0.3, 5.0, 5.0])
    with pytest.raises(DatasetError, match="no labelled pixel"):
        class_weights([0, 0, 0, 0], "inverse")


def test_patch_mean_and_pixel_distributions_on_a_hand_example():
    # columns: background, snow, cloud, water, thin_cloud (the default's ignored class), 255
    counts = np.array([[10, 0, 0, 0, 6, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 16]])
    result = distribution(counts, DEFAULT_CLASS_SET)
    assert result["patches"] == 3
    assert result["class_pixel_counts"] == {"0": 11, "1": 1, "2": 1, "3": 1, "4": 6, "255": 16}
    np.testing.assert_allclose(result["class_fraction"]["patch-mean"], [0.625, 0.125, 0.125, 0.125])
    np.testing.assert_allclose(result["class_fraction"]["pixel"], np.array([11, 1, 1, 1]) / 14)
    # the thesis's five encoded classes: patch 1 is 10/16 background and 6/16 thin clouds, patch 2 a quarter each
    np.testing.assert_allclose(result["class_fraction"]["encoded patch-mean"], [0.4375, 0.125, 0.125, 0.125, 0.1875])


def test_stats_match_a_direct_count_of_the_shards(tmp_path, shard_paths):
    stats_path, plot_path = tmp_path / "stats.json", tmp_path / "class_distribution.png"
    build_dataset_stats(shard_paths[::-1], stats_path, plot_path, "demo", stats_options())
    stats = json.loads(stats_path.read_text())
    assert [(e["tile"], e["date"]) for e in stats["dates"]] == sorted((e["tile"], e["date"]) for e in stats["dates"])
    assert stats["bands"][-1] == "ELEVATION" and stats["patch_size"] == 16 and stats["normalisation"]["name"]
    per_patch = []
    for entry in stats["dates"]:
        labels = read_labels(entry["shard"])
        assert entry["patches"] == len(labels)
        direct = {str(c): int((labels == c).sum()) for c in (0, 1, 2, 3, 4, 255)}  # 4: no thin clouds here
        assert entry["class_pixel_counts"] == direct
        fractions = np.array([[(patch == c).mean() for c in range(4)] for patch in labels])
        np.testing.assert_allclose(entry["class_fraction"]["patch-mean"], fractions.mean(axis=0))
        per_patch.append(fractions)
    thesis_total = np.concatenate(per_patch).mean(axis=0)  # sum of all patch fractions / number of patches
    np.testing.assert_allclose(stats["total"]["class_fraction"]["patch-mean"], thesis_total)
    assert stats["total"]["patches"] == sum(e["patches"] for e in stats["dates"]) == 11 + 12 + 13 + 14
    np.testing.assert_allclose(stats["class_weights"]["values"], (1 - thesis_total) / thesis_total)
    assert stats["class_weights"]["formula"] == "inverse-ratio" and stats["class_weights"]["absent_classes"] == []
    assert stats["digest"] == digest(stats)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_digest_follows_the_content(tmp_path, shard_paths):
    build_dataset_stats(shard_paths, tmp_path / "a.json", tmp_path / "a.png", "demo", stats_options())
    build_dataset_stats(shard_paths[::-1], tmp_path / "b.json", tmp_path / "b.png", "demo", stats_options())
    options = stats_options() | {"class_weights": "inverse"}
    build_dataset_stats(shard_paths, tmp_path / "c.json", tmp_path / "c.png", "demo", options)
    a, b, c = (json.loads((tmp_path / f"{name}.json").read_text())["digest"] for name in "abc")
    assert a == b != c


def test_a_date_split_keeps_every_tile_of_a_date_together(tmp_path, shard_paths):
    options = stats_options(validation_dates=["20210720T101559"])
    build_dataset_stats(shard_paths, tmp_path / "s.json", tmp_path / "s.png", "demo", options)
    split = load_split(tmp_path / "s.json")
    assert [Path(p).parent.name + "/" + Path(p).stem for p, _ in split["validation"]] == [
        "32TMS/20210720T101559",
        "32TNS/20210720T101559",
    ]
    assert all(indices is None for _, indices in split["train"] + split["validation"])
    assert {Path(p).stem for p, _ in split["train"]} == {"20210111T102309", "20211008T101829"}
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["split"]["patches"] == {"train": 11 + 14, "validation": 12 + 13}


def test_the_seeded_date_pick_is_stable_when_dates_are_added():
    options = stats_options(validation_fraction=0.2)["split"]
    dates = [f"2021{month:02d}{day:02d}T101559" for month in range(1, 13) for day in (5, 20)]
    first = validation_dates(dates[:16], options)
    later = validation_dates(dates, options)
    assert first == later & set(dates[:16]), "no earlier date changes set"
    assert 0 < len(later) < len(dates) and 0 < len(first) < 16
    assert validation_dates(dates, options | {"seed": 1}) != later


def test_date_splits_that_leave_a_set_empty_are_errors_or_move_one_date():
    options = stats_options()["split"]
    with pytest.raises(DatasetError, match="at least two dates"):
        validation_dates(["20210720T101559", "20210720T101559"], options)
    with pytest.raises(DatasetError, match="leave no validation date"):
        validation_dates(["20210720T101559", "20210721T101559"], options | {"validation_dates": ["20200101T000000"]})
    with pytest.raises(DatasetError, match="leave no training date"):
        validation_dates(
            ["20210720T101559"] * 2 + ["20210721T101559"],
            options | {"validation_dates": ["20210720T101559", "20210721T101559"]},
        )
    tiny = validation_dates(["20210720T101559", "20210721T101559"], options | {"validation_fraction": 0.01})
    assert len(tiny) == 1
    most = validation_dates(["20210720T101559", "20210721T101559"], options | {"validation_fraction": 0.99})
    assert len(most) == 1


def test_a_patch_split_is_seeded_disjoint_and_85_15(tmp_path, shard_paths):
    sizes = [8192] * 36
    indices = patch_split(sizes, {"validation_fraction": 0.15, "seed": 42})
    assert sum(len(v) for _, v in indices) == 44237 and sum(len(t) for t, _ in indices) == 250675  # thesis counts
    for (train, validation), size in zip(indices, sizes):
        assert sorted(train + validation) == list(range(size)) and not set(train) & set(validation)
    assert indices == patch_split(sizes, {"validation_fraction": 0.15, "seed": 42})
    assert indices != patch_split(sizes, {"validation_fraction": 0.15, "seed": 41})

    options = stats_options(method="patch")
    build_dataset_stats(shard_paths, tmp_path / "p.json", tmp_path / "p.png", "demo", options)
    split = load_split(tmp_path / "p.json")
    train, validation = ShardDataset(split["train"]), ShardDataset(split["validation"])
    assert len(validation) == math.ceil(0.15 * 50) and len(train) + len(validation) == 50
    for path, indices in split["validation"]:
        assert indices.dtype == np.int64
        train_indices = dict((p, i) for p, i in split["train"]).get(path, np.empty(0))
        assert not set(indices) & set(train_indices)


def test_shards_of_different_layouts_do_not_mix(tmp_path, shard_paths):
    odd = build_real_shard(tmp_path, "32TNS", "20211108T101829", seed=5, patch_size=32)
    with pytest.raises(DatasetError, match=r"20211108T101829\.h5: patch_size differs from that of"):
        build_dataset_stats([*shard_paths, odd], tmp_path / "x.json", tmp_path / "x.png", "demo", stats_options())
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(DatasetError, match="dataset demo has no shards"):
        build_dataset_stats([], tmp_path / "x.json", tmp_path / "x.png", "demo", stats_options())
