# Configuration check, scene discovery and target lists shared by every rule file.
from pathlib import Path

from snowcloud import demo
from snowcloud.config import experiments_to_run, validate_config
from snowcloud.inventory import find_products, scene_path
from snowcloud.labels import label_files

validate_config(config)


wildcard_constraints:
    tile=r"\d{2}[A-Z]{3}",
    date=r"\d{8}T\d{6}",
    dataset=r"[A-Za-z0-9_.-]+",
    experiment=r"[A-Za-z0-9_.-]+",


if config["demo"]["enabled"]:
    PRODUCTS = demo.planned_products(
        config["demo"], config["raw_data"], config["tiles"], config["dates"]
    )
else:
    PRODUCTS = find_products(config["raw_data"], config["tiles"], config["dates"])

SCENES = list(PRODUCTS)


def dem_path(wildcards):
    return str(scene_path(config["dem"], wildcards.tile))


def label_path(wildcards):
    return str(scene_path(config["labels"], wildcards.tile, wildcards.date))


def label_files_of(wildcards):
    """The files behind a label (a thesis folder's mask.jp2 and mask_coverage.jp2), so that editing
    one of them in place reruns what reads the label."""
    path = Path(label_path(wildcards))
    return [str(file) for file in label_files(path)] if path.is_dir() else str(path)


def has_label(tile, date):
    return (
        config["demo"]["enabled"] or scene_path(config["labels"], tile, date).exists()
    )


LABELLED = [(tile, date) for tile, date in SCENES if has_label(tile, date)]


def shards_of(dataset):
    return [f"results/shards/{dataset}/{tile}/{date}.h5" for tile, date in LABELLED]


def experiment_dataset(wildcards):
    return config["experiments"][wildcards.experiment]["dataset"]


def datasets_to_build():
    return sorted(
        {config["experiments"][name]["dataset"] for name in experiments_to_run(config)}
    )


def final_targets():
    targets = []
    for experiment in experiments_to_run(config):
        targets += [
            f"results/predictions/{experiment}/{tile}/{date}.tif"
            for tile, date in SCENES
        ]
        targets += [
            f"results/quicklooks/{experiment}/{tile}/{date}.png"
            for tile, date in SCENES
        ]
        targets.append(f"results/evaluation/{experiment}/summary.csv")
    return targets


# Input functions of the rules.
def preprocess_inputs(wildcards):
    inputs = {"safe": str(PRODUCTS[(wildcards.tile, wildcards.date)].path)}
    if config["preprocess"]["dem"]:
        inputs["dem"] = dem_path(wildcards)
    return inputs


def train_inputs(wildcards):
    dataset = experiment_dataset(wildcards)
    return {
        "stats": f"results/datasets/{dataset}/stats.json",
        "shards": shards_of(dataset),
    }


def run_configuration(wildcards):
    """The configuration sections behind an experiment's results (shown in the report)."""
    experiment = config["experiments"][wildcards.experiment]
    return {
        "experiment": {wildcards.experiment: experiment},
        "dataset": {experiment["dataset"]: config["datasets"][experiment["dataset"]]},
        "preprocess": config["preprocess"],
        "evaluation": config["evaluation"],
    }


def evaluation_summary_inputs(wildcards):
    return {
        "evaluations": [
            f"results/evaluation/{wildcards.experiment}/{tile}/{date}.json"
            for tile, date in LABELLED
        ],
        "stats": f"results/datasets/{experiment_dataset(wildcards)}/stats.json",
    }
