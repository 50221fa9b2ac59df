"""Incremental reruns: after a complete run, Snakemake schedules exactly what a change makes stale.

The scenarios run on real downloaded-style inputs, not the demo rule: the test makes demo products once, puts
three dates under raw_data and keeps a fourth "download" aside, as a user adds a new SAFE during a season
(`demo.enabled: false`; the demo rule makes every demo product in one job, so a new demo date would remake
them all). The tests share one work directory and run in file order; a test that only plans restores what it
changed, a test that runs (a new date) leaves a complete tree for the next one. docs/slurm.md has the resulting
table.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pystac
import pytest
import rasterio
import torch
from helpers.workflow_runs import (
    DATES,
    TILE,
    jobs_by_rule,
    old_empty_file,
    planned_jobs,
    product_name,
    snakemake,
    tiny_config,
    write_config,
)

from snowcloud import checkpoint
from snowcloud.demo import make_demo_data, planned_products

pytestmark = pytest.mark.workflow

NEW_DATE = "20220113T102341"
UNLABELLED_DATE = "20220218T102049"  # a download without a label
LATE_DATE = "20220310T101829"  # a labelled download added while only the inference-only experiment runs
REUSE = "reuse"  # the inference-only experiment: the demo's model, copied to CHECKPOINT
CHECKPOINT = "checkpoints/demo.pt"
EXPERIMENT = "demo"
STATS = "results/datasets/demo/stats.json"
MODEL = f"results/models/{EXPERIMENT}/model.pt"
SUMMARY = f"results/evaluation/{EXPERIMENT}/summary.csv"
SEASON = {"season": [f"results/season/{EXPERIMENT}.csv"], "stac": [f"results/stac/{EXPERIMENT}"]}
INPUTS = {
    "demo": {"enabled": False},
    "raw_data": "raw",
    "dem": "dem/T{tile}.tif",
    "labels": "labels/T{tile}/{date}.tif",
}
ONE_EPOCH = {"experiments": {EXPERIMENT: {"training": {"epochs": 1}}}}


def scene(date: str) -> str:
    return f"results/scenes/{TILE}/{date}.tif"


def shard(date: str) -> str:
    return f"results/shards/demo/{TILE}/{date}.h5"


def per_date(rule_outputs: dict[str, str], dates: list[str]) -> dict[str, list[str]]:
    return {rule: sorted(pattern.format(date=date) for date in dates) for rule, pattern in rule_outputs.items()}


def after_model(dates: list[str]) -> dict[str, list[str]]:
    """What a new model.pt makes stale: every prediction (its job also makes the quicklook), its evaluation, the
    summary, the season table and the STAC catalogue."""
    return {
        **per_date(
            {
                "infer": f"results/predictions/{EXPERIMENT}/{TILE}/{{date}}.tif",
                "evaluate": f"results/evaluation/{EXPERIMENT}/{TILE}/{{date}}.json",
            },
            dates,
        ),
        "evaluation_summary": [SUMMARY],
        **SEASON,
    }


def after_stats(dates: list[str]) -> dict[str, list[str]]:
    return {"dataset_stats": [STATS], "train": [MODEL], **after_model(dates)}


class Season:
    """The shared work directory: inputs of the dates in `dates`, one more product waiting in downloads/."""

    def __init__(self, root: Path):
        self.root = root
        self.dates = list(DATES)
        self.overrides: list[dict] = [INPUTS, ONE_EPOCH]

    def product(self, date: str, folder: str = "raw") -> Path:
        demo = {**tiny_config()["demo"], "dates": [date]}
        (product,) = planned_products(demo, self.root / folder).values()
        return product.path

    def label(self, date: str, folder: str = ".") -> Path:
        return self.root / folder / "labels" / f"T{TILE}" / f"{date}.tif"

    def write_config(self, *changes: dict) -> None:
        write_config(self.root, tiny_config(*self.overrides, *changes))

    def plan(self) -> dict[str, list[str]]:
        return jobs_by_rule(planned_jobs(self.root))

    def mtimes(self, paths: list[str]) -> dict[str, int]:
        return {path: (self.root / path).stat().st_mtime_ns for path in paths}


@pytest.fixture(scope="module")
def season(tmp_path_factory) -> Season:
    season = Season(tmp_path_factory.mktemp("incremental"))
    root = season.root
    demo = {**tiny_config()["demo"], "dates": [*DATES, NEW_DATE]}
    make_demo_data(
        {**demo, "dates": [*demo["dates"], UNLABELLED_DATE, LATE_DATE]},
        root / "raw",
        str(root / "dem" / "T{tile}.tif"),
        str(root / "labels" / "T{tile}" / "{date}.tif"),
    )
    for date in (NEW_DATE, UNLABELLED_DATE, LATE_DATE):  # not downloaded yet
        for path in (season.product(date), season.label(date)):
            move(path, root / "downloads" / path.relative_to(root))
    season.label(UNLABELLED_DATE, "downloads").unlink()
    # Other content for the same dates (another seed): a reprocessed product, a corrected label.
    other = root / "other"
    make_demo_data(
        {**demo, "seed": demo["seed"] + 1},
        other / "raw",
        str(other / "dem" / "T{tile}.tif"),
        str(other / "labels" / "T{tile}" / "{date}.tif"),
    )
    season.write_config()
    snakemake(root, "--cores", "2")
    return season


def download(season: Season, date: str) -> None:
    """The user drops a new product (and its label, if it has one) into the inputs."""
    for path in (season.product(date), season.label(date)):
        if (waiting := season.root / "downloads" / path.relative_to(season.root)).exists():
            move(waiting, path)


def move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)


@contextlib.contextmanager
def replaced(path: Path, other: Path) -> Iterator[None]:
    """`path` holds the content of `other` inside the block; its own content and mtime are restored after."""
    kept = path.with_name(path.name + ".kept")
    shutil.copy2(path, kept)
    shutil.copyfile(other, path)
    try:
        yield
    finally:
        shutil.copy2(kept, path)
        kept.unlink()


def test_unchanged_tree_schedules_nothing(season):
    assert season.plan() == {}


def test_new_date_runs_its_chain_and_what_aggregates_all_dates(season):
    before = season.mtimes([scene(d) for d in DATES] + [shard(d) for d in DATES] + [MODEL])
    download(season, NEW_DATE)
    season.dates = sorted([*DATES, NEW_DATE])

    assert season.plan() == {
        "preprocess": [scene(NEW_DATE)],
        "shard": [shard(NEW_DATE)],
        **after_stats(season.dates),
    }
    snakemake(season.root, "--cores", "2")
    after = season.mtimes(list(before))
    assert {path for path in before if after[path] != before[path]} == {MODEL}
    assert (season.root / scene(NEW_DATE)).exists() and (season.root / shard(NEW_DATE)).exists()
    assert season.plan() == {}


def test_changed_safe_reruns_that_date(season):
    date = DATES[0]
    with replaced(season.product(date), season.product(date, "other/raw")):  # a reprocessed product
        assert season.plan() == {"preprocess": [scene(date)], "shard": [shard(date)], **after_stats(season.dates)}
    assert season.plan() == {}


def test_touched_small_input_with_same_content_reruns_nothing(season):
    """Snakemake compares checksums of inputs up to --max-checksum-file-size (1 MB) before their mtimes."""
    label = season.label(DATES[1])
    assert label.stat().st_size < 1_000_000
    os.utime(label)
    assert season.plan() == {}


def test_changed_label_reshards_that_date(season):
    date = DATES[1]
    with replaced(season.label(date), season.label(date, "other")):
        assert season.plan() == {"shard": [shard(date)], **after_stats(season.dates)}
    assert season.plan() == {}


def test_inference_option_reruns_inference_and_evaluation_only(season):
    season.write_config({"experiments": {EXPERIMENT: {"inference": {"tta": True}}}})
    try:
        jobs = planned_jobs(season.root)
        assert jobs_by_rule(jobs) == after_model(season.dates)
        assert {job.outputs for job in jobs if job.rule == "infer"} == {
            (
                f"results/predictions/{EXPERIMENT}/{TILE}/{date}.tif",
                f"results/quicklooks/{EXPERIMENT}/{TILE}/{date}.png",
            )
            for date in season.dates
        }, "one job per date makes the prediction and its quicklook"
    finally:
        season.write_config()
    assert season.plan() == {}


def test_performance_only_change_is_recorded_with_touch(season):
    """Every key of a rule's options is a rerun trigger, loader workers included; `snakemake --touch` records a
    change that cannot alter results without recomputing anything (docs/slurm.md)."""
    model = season.root / MODEL
    content = model.read_bytes()
    workers = {"experiments": {EXPERIMENT: {"training": {"workers": 0}}}}
    season.write_config(workers)
    assert season.plan() == {"train": [MODEL], **after_model(season.dates)}
    snakemake(season.root, "--touch", "--cores", "1")
    assert season.plan() == {}
    assert model.read_bytes() == content
    season.overrides.append(workers)


@pytest.mark.parametrize(
    ("change", "stale"),
    [
        ({"experiments": {EXPERIMENT: {"training": {"optimizer": {"lr": 0.0005}}}}}, "train"),
        ({"experiments": {EXPERIMENT: {"model": {"base_channels": 6}}}}, "train"),
        ({"datasets": {"demo": {"class_weights": "inverse"}}}, "dataset_stats"),
        ({"datasets": {"demo": {"split": {"validation_dates": [DATES[0]]}}}}, "dataset_stats"),
        ({"datasets": {"demo": {"sampler": {"seed": 1}}}}, "shard"),
        ({"datasets": {"demo": {"normalisation": "legacy-dn10000"}}}, "shard"),
        ({"datasets": {"demo": {"compression": "gzip"}}}, "shard"),
        ({"preprocess": {"resampling": "cubic"}}, "preprocess"),
        ({"evaluation": {"margin_pixels": 2}}, "evaluate"),
        ({"season": {"snow_classes": ["snow", "thin_cloud"]}}, "season"),
    ],
    ids=[
        "training",
        "model",
        "class_weights",
        "split",
        "sampler",
        "normalisation",
        "compression",
        "preprocess",
        "evaluation",
        "season",
    ],
)
def test_config_key_reruns_its_stage_and_what_follows(season, change, stale):
    """The rule whose `params` hold the changed key reruns for every date, then everything downstream of it."""
    dates = season.dates
    downstream = {
        "evaluate": {"evaluate": after_model(dates)["evaluate"], "evaluation_summary": [SUMMARY]},
        "season": {"season": SEASON["season"]},
        "train": {"train": [MODEL], **after_model(dates)},
        "dataset_stats": after_stats(dates),
        "shard": {"shard": sorted(shard(d) for d in dates), **after_stats(dates)},
        "preprocess": {
            "preprocess": sorted(scene(d) for d in dates),
            "shard": sorted(shard(d) for d in dates),
            **after_stats(dates),
        },
    }
    season.write_config(change)
    try:
        assert season.plan() == downstream[stale]
    finally:
        season.write_config()
    assert season.plan() == {}


# ----------------------------------------------------------------------------------------------- predicted only


def predicted(experiment: str, dates: list[str], evaluated: list[str]) -> dict[str, list[str]]:
    """An experiment's inference (with the quicklook) of `dates`, the evaluation of `evaluated`, and its summary."""
    return {
        "infer": sorted(f"results/predictions/{experiment}/{TILE}/{d}.tif" for d in dates),
        "evaluate": sorted(f"results/evaluation/{experiment}/{TILE}/{d}.json" for d in evaluated),
        "evaluation_summary": [f"results/evaluation/{experiment}/summary.csv"],
        "season": [f"results/season/{experiment}.csv"],
        "stac": [f"results/stac/{experiment}"],
    }


def test_unlabelled_date_is_predicted_without_retraining_and_adds_its_season_row(season):
    download(season, UNLABELLED_DATE)
    masks = [f"results/predictions/{EXPERIMENT}/{TILE}/{date}.tif" for date in season.dates]
    before = season.mtimes(masks)
    plan = season.plan()
    assert plan == {
        "preprocess": [scene(UNLABELLED_DATE)],
        "infer": [f"results/predictions/{EXPERIMENT}/{TILE}/{UNLABELLED_DATE}.tif"],
        **SEASON,
    }, "no shard, no training, no evaluation; the season table and the catalogue from the masks' headers"
    snakemake(season.root, "--cores", "2")
    assert season.mtimes(masks) == before, "no other date's inference reran"
    with open(season.root / SEASON["season"][0], newline="") as handle:
        rows = {row["date"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted([*season.dates, UNLABELLED_DATE])
    assert rows[UNLABELLED_DATE]["split"] == "" and rows[season.dates[0]]["split"] in ("train", "validation")
    assert pystac.Collection.from_file(str(season.root / SEASON["stac"][0] / "collection.json")).get_item(
        f"{TILE}_{UNLABELLED_DATE}"
    )
    assert season.plan() == {}


def reuse_mask(experiment: str, date: str, season: Season) -> bytes:
    with rasterio.open(season.root / f"results/predictions/{experiment}/{TILE}/{date}.tif") as dataset:
        return dataset.read(1).tobytes()


def test_inference_only_experiment_runs_a_given_model_without_training(season):
    """The demo's trained model.pt, given to a second experiment: predictions identical to the demo's, no shard,
    no statistics, no training; the summary marks the dates' split as unknown."""
    (season.root / CHECKPOINT).parent.mkdir()
    shutil.copy2(season.root / MODEL, season.root / CHECKPOINT)
    inference = tiny_config()["experiments"][EXPERIMENT]["inference"]
    season.overrides.append({"experiments": {REUSE: {"model": CHECKPOINT, "inference": inference}}})
    season.write_config()
    dates = sorted([*season.dates, UNLABELLED_DATE])
    assert season.plan() == {"use_model": [f"results/models/{REUSE}/model.pt"], **predicted(REUSE, dates, season.dates)}
    snakemake(season.root, "--cores", "2")
    for date in dates:
        assert reuse_mask(REUSE, date, season) == reuse_mask(EXPERIMENT, date, season)
    summary = (season.root / f"results/evaluation/{REUSE}/summary.csv").read_text()
    assert ",unknown,model," in summary and ",validation," not in summary
    assert season.plan() == {}


def test_touched_checkpoint_reruns_nothing(season):
    os.utime(season.root / CHECKPOINT)
    assert season.plan() == {}


def test_replaced_checkpoint_reruns_every_inference_of_its_experiment(season, tmp_path):
    network, metadata = checkpoint.load_model(season.root / CHECKPOINT)
    with torch.no_grad():
        network.outc.bias.add_(0.1)  # other weights: a retrained model
    checkpoint.save_model(tmp_path / "other.pt", network, {k: v for k, v in metadata.items() if k != "format"})
    dates = sorted([*season.dates, UNLABELLED_DATE])
    with replaced(season.root / CHECKPOINT, tmp_path / "other.pt"):
        assert season.plan() == {
            "use_model": [f"results/models/{REUSE}/model.pt"],
            **predicted(REUSE, dates, season.dates),
        }
    assert season.plan() == {}


def test_checkpoint_trained_on_other_scenes_gets_scene_rasters_of_its_own(season, tmp_path):
    """A model whose training scenes were made with other preprocess options than the configuration's gets its
    own scene rasters, made with the model's options; the shared scenes (and the trained experiment) stay."""
    network, metadata = checkpoint.load_model(season.root / CHECKPOINT)
    metadata = {k: v for k, v in metadata.items() if k != "format"}
    metadata["preprocess"] = {**metadata["preprocess"], "resampling": "nearest"}
    checkpoint.save_model(tmp_path / "nearest.pt", network, metadata)
    dates = sorted([*season.dates, UNLABELLED_DATE])
    with replaced(season.root / CHECKPOINT, tmp_path / "nearest.pt"):
        assert season.plan() == {
            "use_model": [f"results/models/{REUSE}/model.pt"],
            "preprocess_for_model": sorted(f"results/scenes/{REUSE}/{TILE}/{d}.tif" for d in dates),
            **predicted(REUSE, dates, season.dates),
        }
    assert season.plan() == {}


def test_new_date_of_an_inference_only_experiment_runs_that_dates_jobs_and_its_summary(season):
    season.overrides.append({"run": [REUSE]})
    season.write_config()
    download(season, LATE_DATE)
    assert season.plan() == {"preprocess": [scene(LATE_DATE)], **predicted(REUSE, [LATE_DATE], [LATE_DATE])}


SEASON_DATES = 100


def season_of_empty_files(root: Path, dates: list[str]) -> None:
    """A finished season without computing it: empty products, labels and DEM with real names, the default
    configuration pointed at them, every planned output an empty file, and `--touch` recording them as made."""
    for date in dates:
        old_empty_file(root / "raw" / product_name(TILE, date))
        old_empty_file(root / "labels" / f"T{TILE}" / f"{date}.tif")
    old_empty_file(root / "dem" / f"T{TILE}.tif")
    write_config(root, tiny_config(INPUTS, {"datasets": {"demo": {"split": {"validation_dates": [dates[1]]}}}}))
    for job in planned_jobs(root):
        for output in job.outputs:
            (root / output).parent.mkdir(parents=True, exist_ok=True)
            (root / output).touch()
    snakemake(root, "--touch", "--cores", "1")


def test_a_date_added_to_a_season_of_100_reruns_what_the_table_says(tmp_path):
    """docs/slurm.md: a new product (and label) runs preprocess and shard of that date, then dataset_stats,
    train, and infer and evaluate of every date, and the summary; nothing else of the 100 dates."""
    dates = [f"2021{month:02d}{day:02d}T102421" for month in range(3, 10) for day in range(1, 29)][:SEASON_DATES]
    new = "20211015T102421"
    season_of_empty_files(tmp_path, dates)
    assert jobs_by_rule(planned_jobs(tmp_path)) == {}

    product = old_empty_file(tmp_path / "raw" / product_name(TILE, new))
    label = old_empty_file(tmp_path / "labels" / f"T{TILE}" / f"{new}.tif")
    for path in (product, label):
        os.utime(path)  # downloaded now
    every = sorted([*dates, new])
    assert jobs_by_rule(planned_jobs(tmp_path)) == {
        "preprocess": [scene(new)],
        "shard": [shard(new)],
        **after_stats(every),
    }
