"""The reproduction page of a trained run: thesis log format, documented numbers, argmax metrics, distributions."""

import json

import h5py
import numpy as np
import pytest
from helpers.training_shards import experiment_options, real_dataset

from snowcloud.checkpoint import read_checkpoint
from snowcloud.reproduction import write_reproduction
from snowcloud.shards import read_attributes
from snowcloud.train import train_experiment

THESIS = {
    "commit": "a82e3cd",
    "threshold": 0.75,
    "validation_steps": 2,
    "documented": {
        "epoch": 30,
        "train_loss": 0.04946,
        "test_loss": 0.040753,
        "metrics": {"union_over_inter_water": 0.7838},
        "class_distribution": [0.4132, 0.31163, 0.26706, 0.00812],
    },
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduction")
    stats = real_dataset(root / "data", dates=3, patches=12, patch_size=16)
    out = root / "results" / "models" / "toy"
    options = experiment_options(epochs=1, batch_size=4, workers=0)
    train_experiment(stats, out / "model.pt", out / "history.csv", out / "curves.png", out / "state", "toy", options)
    return root, stats, out, options


def test_the_page_puts_the_thesis_log_format_beside_the_documented_numbers_and_argmax_metrics(trained):
    root, stats, out, options = trained
    page_path = root / "results" / "reproduction" / "toy.md"
    write_reproduction(out / "model.pt", out / "history.csv", stats, page_path, "toy", {**options, "thesis": THESIS})
    page = page_path.read_text()
    assert "Epoch: 1, train_loss: " in page and "- union_over_inter_clouds: " in page
    assert (
        "Documented by the thesis (epoch 30):" in page
        and "Epoch: 30, train_loss: 0.049460, test_loss: 0.040753" in page
    )
    row = next(line for line in page.splitlines() if line.startswith("| `union_over_inter_water` |"))
    assert row.split(" | ")[2] == "0.7838"
    assert "3 batch(es) of up to 4 patches" in page  # 2 steps + the thesis's extra batch
    assert "documented: Total Class Distribution: [0.41320, 0.31163, 0.26706, 0.00812]" in page
    assert "ours:       Total Class Distribution: [" in page


def test_an_experiment_without_a_thesis_run_has_no_page(trained):
    root, stats, out, options = trained
    with pytest.raises(ValueError, match="thesis is not set"):
        write_reproduction(
            out / "model.pt", out / "history.csv", stats, root / "x.md", "toy", {**options, "thesis": None}
        )


ERA_A = {
    "classes": {"snow": [1], "cloud": [2], "water": [3], "thin_cloud": [4]},
    "ignored_classes": {"background": [0]},
}


def test_a_class_set_travels_from_the_shards_through_the_stats_and_checkpoint_to_the_page(tmp_path):
    """913b2a3's classes (thin clouds learnt, background ignored) on labels with thin clouds: the shard records
    the set and counts every encoded class; the model has 4 outputs named by it; a thesis distribution of five
    classes prints the real share of the fifth (here background, the ignored class)."""
    stats_path = real_dataset(tmp_path / "data", dates=3, patches=8, patch_size=16, class_set=ERA_A)
    stats = json.loads(stats_path.read_text())
    shard = stats["dates"][0]["shard"]
    assert read_attributes(shard)["class_set"] == ERA_A
    with h5py.File(shard, "r") as data:
        labels, counts = data["label"][:], data["class_counts"][:]
    assert counts.shape[1] == 6 and set(np.unique(labels).tolist()) <= {0, 1, 2, 3, 255}
    np.testing.assert_array_equal(counts[:, 3], (labels == 3).sum(axis=(1, 2)))  # thin_cloud is class 3
    np.testing.assert_array_equal(counts[:, 4] + counts[:, 5], (labels == 255).sum(axis=(1, 2)))  # background: 255
    assert stats["classes"] == ["snow", "cloud", "water", "thin_cloud"] and stats["encoded_classes"][4] == "background"
    fifth = stats["total"]["class_fraction"]["encoded patch-mean"][4]
    assert 0 < fifth < 1 and len(stats["class_weights"]["values"]) == 4
    out = tmp_path / "model"
    options = experiment_options(epochs=1, batch_size=4, workers=0, steps_per_epoch=1, validation_steps=1)
    train_experiment(
        stats_path, out / "model.pt", out / "history.csv", out / "curves.png", out / "state", "toy", options
    )
    metadata = read_checkpoint(out / "model.pt")["metadata"]
    assert metadata["classes"] == stats["classes"] and metadata["model_args"]["n_classes"] == 4
    assert metadata["class_set"] == ERA_A
    thesis = {**THESIS, "documented": {"class_distribution": [0.1, 0.2, 0.3, 0.3, 0.1]}}
    write_reproduction(
        out / "model.pt", out / "history.csv", stats_path, tmp_path / "p.md", "toy", {**options, "thesis": thesis}
    )
    page = (tmp_path / "p.md").read_text()
    assert "- union_over_inter_thin_cloud: " in page and "union_over_inter_background" not in page
    assert "Classes, in the order printed: snow, cloud, water, thin_cloud, background" in page
    assert f", {fifth:.5f}]" in next(line for line in page.splitlines() if line.startswith("ours:       Total"))
