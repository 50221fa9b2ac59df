"""The reproduction page of a trained run: thesis log format, documented numbers, argmax metrics, distributions."""

import pytest
from training_shards import experiment_options, real_dataset

from snowcloud.reproduction import write_reproduction
from snowcloud.train import train_experiment

THESIS = {
    "commit": "a82e3cd",
    "threshold": 0.75,
    "validation_steps": 2,
    "documented": {
        "epoch": 30, "train_loss": 0.04946, "test_loss": 0.040753,
        "metrics": {"union_over_inter_water": 0.7838},
        "class_distribution": [0.4132, 0.31163, 0.26706, 0.00812],
    },
}  # fmt: skip


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
    assert "Documented by the thesis (epoch 30):" in page and "Epoch: 30, train_loss: 0.049460, test_loss: 0.040753" in page
    row = next(line for line in page.splitlines() if line.startswith("| `union_over_inter_water` |"))
    assert row.split(" | ")[2] == "0.7838"
    assert "3 batch(es) of up to 4 patches" in page  # 2 steps + the thesis's extra batch
    assert "documented: Total Class Distribution: [0.41320, 0.31163, 0.26706, 0.00812]" in page
    assert "ours:       Total Class Distribution: [" in page


def test_an_experiment_without_a_thesis_run_has_no_page(trained):
    root, stats, out, options = trained
    with pytest.raises(ValueError, match="thesis is not set"):
        write_reproduction(out / "model.pt", out / "history.csv", stats, root / "x.md", "toy", {**options, "thesis": None})
