"""The 13 thesis presets: they validate, state what they could not copy, have the thesis's parameter counts and
class weights, train with their own loss / optimiser / scheduler, and run end to end on the demo through the
smoke override (config/presets/smoke.yaml) without being edited.

Cost: the 13 presets are planned in one dry run and each trains two steps of a width-4 network on tiny shards;
four of them (a82e3cd: era C, 14 channels; 4c654a2: automatic labels, RMSprop, summed loss, a fifth encoded
class; 8ad1ca2: 13 channels, a date list; 913b2a3: its own class set, thin clouds without background) run
together in one Snakemake invocation on one demo: demo data, scenes, automatic labels, shards, statistics,
training and reproduction pages, and for a82e3cd and 913b2a3 inference and evaluation too."""

import copy
import functools
import json
import resource
import time

import numpy as np
import pytest
import torch
import yaml
from helpers.training_shards import write_shard
from helpers.workflow_runs import REPO, jobs_by_rule, planned_jobs, snakemake, write_config

from snowcloud.augment import Augmentation
from snowcloud.checkpoint import read_checkpoint
from snowcloud.config import load_config, merge_into, validate_config
from snowcloud.dataset_stats import class_weights
from snowcloud.labels import CLASSES, ClassSet
from snowcloud.loader import ShardDataset
from snowcloud.model import build_model, count_parameters
from snowcloud.training.loop import Trainer
from snowcloud.training.runtime import resolve_runtime

PRESETS = [
    "913b2a3",
    "4c654a2",
    "8fe0cea",
    "a2528d2",
    "202ea7d",
    "8ad1ca2",
    "2d0d993",
    "e40b271",
    "1c88144",
    "8d687e8",
    "27926e7",
    "eaa7527",
    "a82e3cd",
]
THIRTEEN_CHANNELS = {"913b2a3", "4c654a2", "8fe0cea", "202ea7d", "8ad1ca2"}
FULL_RUNS = ["a82e3cd", "4c654a2", "8ad1ca2", "913b2a3"]
CONFIG = REPO / "config" / "config.yaml"
SMOKE = REPO / "config" / "presets" / "smoke.yaml"


def preset_path(name):
    return REPO / "config" / "presets" / f"{name}.yaml"


def merged(*names, smoke=True):
    """The default config, the presets and (optionally) the smoke override merged as --configfile does."""
    config = yaml.safe_load(CONFIG.read_text())
    for path in [*map(preset_path, names), *([SMOKE] if smoke else [])]:
        merge_into(config, yaml.safe_load(path.read_text()))
    config["run"] = list(names)
    return config


@functools.cache
def _loaded(name, smoke):
    return load_config(CONFIG, preset_path(name), *([SMOKE] if smoke else []))


def experiment(name, smoke=False):
    """(config, experiment, dataset) of a validated preset, optionally under the smoke override."""
    config = copy.deepcopy(_loaded(name, smoke))
    return config, config["experiments"][name], config["datasets"][config["experiments"][name]["dataset"]]


@pytest.mark.parametrize("name", PRESETS)
def test_every_documented_run_has_a_preset_that_validates_alone_and_under_the_smoke_override(name):
    config, run, dataset = experiment(name)
    assert config["run"] == [name] and run["thesis"]["commit"] == name
    assert dataset["elevation"] == (name not in THIRTEEN_CHANNELS)
    header = [line for line in preset_path(name).read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert "Where docs and code disagree" in text and "Not copied, and why" in text
    _, small, small_dataset = experiment(name, smoke=True)
    assert small["model"]["base_channels"] == 4 and small["training"]["epochs"] == 1
    assert small_dataset["normalisation"] == dataset["normalisation"]
    assert small["training"]["optimizer"] == run["training"]["optimizer"]
    assert run["training"]["augmentation"]["spectral"]["p"] == 0  # the thesis had no spectral augmentation


@pytest.mark.parametrize("name", PRESETS)
def test_full_width_models_have_the_thesis_parameter_counts(name):
    _, run, dataset = experiment(name)
    channels = 14 if dataset["elevation"] else 13
    classes = ClassSet.from_options(dataset).names  # 913b2a3: snow, cloud, water, thin_cloud; the others the default
    assert len(classes) == 4
    with torch.device("meta"):  # no memory, no time: only the shapes
        model = build_model(
            run["model"]["architecture"],
            in_channels=channels,
            n_classes=len(classes),
            base_channels=run["model"]["base_channels"],
        )
    assert count_parameters(model) == (31_044_164 if channels == 14 else 31_043_588)


@pytest.mark.parametrize("name", PRESETS)
def test_weight_formulas_reproduce_the_documented_weights_from_the_documented_fractions(name):
    _, run, dataset = experiment(name)
    documented = run["thesis"]["documented"]
    weights, _ = class_weights(documented["weight_fractions"], dataset["class_weights"])
    np.testing.assert_allclose(weights, documented["class_weights"], rtol=5e-4)


def test_the_four_weight_eras_give_the_numbers_of_thesis_md():
    era_a = class_weights([0.25052, 0.00214, 0.01381, 0.02479], "normalised-inverse")[0]
    assert sum(era_a) == pytest.approx(1.0) and era_a[1] == pytest.approx(0.8001, abs=1e-4)
    np.testing.assert_allclose(
        class_weights([0.27557, 0.23914, 0.47962, 0.00567], "inverse")[0],
        [1 / 0.27557, 1 / 0.23914, 1 / 0.47962, 1 / 0.00567],
    )
    e40b271 = [0.4132, 0.31163, 0.26706, 0.00812]  # THESIS.md section 5: (1-f)/f and its square root
    np.testing.assert_allclose(class_weights(e40b271, "inverse-ratio")[0], [1.420, 2.209, 2.745, 122.15], atol=6e-3)
    np.testing.assert_allclose(class_weights(e40b271, "sqrt-inverse-ratio")[0], [1.192, 1.486, 1.657, 11.05], atol=6e-3)


def test_presets_sharing_a_dataset_name_define_it_identically():
    seen = {}
    for name in PRESETS:
        config, run, dataset = experiment(name)
        first = seen.setdefault(run["dataset"], (name, dataset))
        assert first[1] == dataset, f"{name} and {first[0]} define dataset {run['dataset']} differently"


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preset_shards")
    return {
        channels: (
            write_shard(folder / f"t{channels}.h5", 8, 1, channels),
            write_shard(folder / f"v{channels}.h5", 4, 2, channels),
        )
        for channels in (13, 14)
    }


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_trains_two_steps_with_its_own_loss_optimizer_and_scheduler(name, tiny_shards, tmp_path):
    _, run, dataset = experiment(name, smoke=True)
    training = {**run["training"], "workers": 0}
    channels = 14 if dataset["elevation"] else 13
    train, validation = tiny_shards[channels]
    augmentation = Augmentation.from_options(training["augmentation"])
    trainer = Trainer(
        ShardDataset([(train, None)], augment=augmentation if augmentation.active else None),
        ShardDataset([(validation, None)]),
        model_options=run["model"],
        in_channels=channels,
        training=training,
        class_weights=[1.0, 2.0, 2.0, 50.0],
        runtime=resolve_runtime(training, 1),
        state_path=tmp_path / "state.pt",
        fingerprint_inputs={"preset": name},
        class_names=CLASSES,
    )
    optimiser = run["training"]["optimizer"]["name"]
    assert type(trainer.optimizer).__name__.lower() == optimiser
    assert trainer.scheduler.mode == run["training"]["scheduler"]["mode"]
    result = trainer.run()
    assert result.epochs_trained == 1 and np.isfinite(result.history[0]["val_loss"])


@pytest.mark.workflow
def test_all_thirteen_presets_plan_every_stage_under_the_smoke_override(tmp_path):
    write_config(tmp_path, merged(*PRESETS))
    plan = jobs_by_rule(planned_jobs(tmp_path))
    assert plan["train"] == sorted(f"results/models/{name}/model.pt" for name in PRESETS)
    assert plan["reproduction"] == sorted(f"results/reproduction/{name}.md" for name in PRESETS)
    assert len(plan["auto_label"]) == 3  # one per demo date, shared by the three auto-labelled presets


@pytest.mark.workflow
def test_four_presets_run_end_to_end_on_the_demo_under_the_smoke_override(tmp_path):
    config = merged(*FULL_RUNS)
    validate_config(copy.deepcopy(config))
    write_config(tmp_path, config)
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    # All four to their reproduction pages; a82e3cd and 913b2a3 also through inference and evaluation.
    evaluated = [f"results/evaluation/{name}/summary.csv" for name in (FULL_RUNS[0], "913b2a3")]
    snakemake(tmp_path, "--cores", "2", "reproductions", *evaluated, timeout=1200)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    print(f"{len(FULL_RUNS)} presets on the demo: {time.perf_counter() - started:.1f} s wall, {cpu_s:.1f} s CPU")
    for name in FULL_RUNS:
        page = (tmp_path / "results" / "reproduction" / f"{name}.md").read_text()
        assert "Total Class Distribution: [" in page and f"Thesis run {name}" in page
    a82e3cd = (tmp_path / "results" / "reproduction" / "a82e3cd.md").read_text()
    assert "| `union_over_inter_water` |" in a82e3cd and "| 0.7838 |" in a82e3cd
    assert (
        "The thesis documents no epoch results for this run."
        in (tmp_path / "results/reproduction/8ad1ca2.md").read_text()
    )
    # 913b2a3's class set (no background, thin clouds learnt, from the demo's thin-cloud labels) reaches the
    # stats, the checkpoint and its page; 4c654a2 prints five classes, the fifth computed from its masks.
    era_a = json.loads((tmp_path / "results/datasets/thesis-era-a/stats.json").read_text())
    assert era_a["classes"] == ["snow", "cloud", "water", "thin_cloud"] and era_a["encoded_classes"][-1] == "background"
    assert era_a["total"]["class_fraction"]["patch-mean"][3] > 0, "the smoke demo labels thin clouds"
    assert read_checkpoint(tmp_path / "results/models/913b2a3/model.pt")["metadata"]["classes"] == era_a["classes"]
    assert "- union_over_inter_thin_cloud: " in (tmp_path / "results/reproduction/913b2a3.md").read_text()
    auto = json.loads((tmp_path / "results/datasets/thesis-auto-600/stats.json").read_text())
    fifth = auto["total"]["class_fraction"]["encoded patch-mean"][4]
    page = (tmp_path / "results/reproduction/4c654a2.md").read_text().splitlines()
    line = next(text for text in page if text.startswith("ours:       Total"))
    assert line.count(",") == 4 and line.endswith(f", {'0' if fifth == 0 else f'{fifth:.5f}'}]")
    ndsi = json.loads((tmp_path / "results/evaluation/913b2a3/32TNS/20220303T101829.json").read_text())["methods"][
        "ndsi"
    ]
    assert ndsi["compared"] == ["snow", "cloud", "water"] and ndsi["metrics"]["iou"]["thin_cloud"] is None
    assert sorted(p.name for p in (tmp_path / "results" / "auto_labels" / "32TNS").iterdir()) == [
        f"{date}.tif" for date in yaml.safe_load(SMOKE.read_text())["demo"]["dates"]
    ]
