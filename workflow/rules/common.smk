# Configuration check, scene discovery and target lists shared by every rule file.
import re
from pathlib import Path

from snowcloud import demo
from snowcloud.config import (
    datasets_of,
    experiments_to_run,
    model_file,
    options_for_model,
    validate_config,
)
from snowcloud.inventory import find_products, scene_path
from snowcloud.labels import label_files
from snowcloud.workflow import (
    record_local_owner,
    release_stale_locks,
    spare_the_cycle_collector,
)

validate_config(config)
spare_the_cycle_collector()  # Snakemake holds every job until it exits: a quarter of planning 5000 scenes
if workflow.is_main_process:
    release_stale_locks()  # a killed local Snakemake's: a plain rerun goes on (profiles/default redoes its jobs)


onstart:
    if workflow.local_exec:
        record_local_owner()


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


def label_inputs(wildcards):
    """The label (input `label`) and the files behind it (`label_files`: a thesis folder's mask.jp2 and
    mask_coverage.jp2), so that editing one of them in place reruns what reads the label. One function for
    both: Snakemake inspects and calls every input function once per job (docs/slurm.md, "Planning").
    """
    path = Path(label_path(wildcards))
    files = [str(file) for file in label_files(path)] if path.is_dir() else str(path)
    return {"label": str(path), "label_files": files}


def auto_labelled(dataset):
    return config["datasets"][dataset]["label_source"] == "auto"


def shard_label_inputs(wildcards):
    """The label a shard reads: the configured mask, or the automatic one (label_source auto)."""
    if auto_labelled(wildcards.dataset):
        return {"label": f"results/auto_labels/{wildcards.tile}/{wildcards.date}.tif"}
    return label_inputs(wildcards)


def auto_label_inputs(wildcards):
    inputs = {"scene": f"results/scenes/{wildcards.tile}/{wildcards.date}.tif"}
    for layer in ("glacier", "surface_water"):
        if config["auto_labels"][layer]:
            inputs[layer] = str(
                scene_path(config["auto_labels"][layer], wildcards.tile)
            )
    return inputs


def has_label(tile, date):
    return (
        config["demo"]["enabled"] or scene_path(config["labels"], tile, date).exists()
    )


LABELLED = [(tile, date) for tile, date in SCENES if has_label(tile, date)]


def shards_of(dataset):
    scenes = SCENES if auto_labelled(dataset) else LABELLED
    return [f"results/shards/{dataset}/{tile}/{date}.h5" for tile, date in scenes]


def experiment_dataset(wildcards):
    return config["experiments"][wildcards.experiment]["dataset"]


def datasets_to_build():
    return datasets_of(config, experiments_to_run(config))


# Inference-only experiments (`model:` a path) run a given model.pt instead of training one.
GIVEN = [name for name, e in config["experiments"].items() if model_file(e) is not None]
TRAINED = [name for name in config["experiments"] if name not in GIVEN]


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def given_model(wildcards):
    """(SHA-256, metadata) of the model.pt an inference-only experiment names."""
    # Imported here, not above: snowcloud.checkpoint imports torch (~1 s), which every Snakemake start would
    # pay otherwise (the dry run, and each Slurm job's two) while only inference-only experiments need it.
    from snowcloud import checkpoint

    return checkpoint.given_model(
        model_file(config["experiments"][wildcards.experiment])
    )


def own_scene_options(wildcards):
    """Preprocess options of an experiment's own scene rasters: set when its given model was trained on
    scenes made otherwise than `preprocess` says (docs/inference.md), else None (the shared scenes).
    """
    if wildcards.experiment not in GIVEN:
        return None
    return options_for_model(
        config["preprocess"], given_model(wildcards)[1].get("preprocess")
    )


def scene_of(wildcards):
    """The scene raster an experiment predicts: the shared one, or its own."""
    own = own_scene_options(wildcards) is not None
    folder = f"results/scenes/{wildcards.experiment}" if own else "results/scenes"
    return f"{folder}/{wildcards.tile}/{wildcards.date}.tif"


def final_targets():
    """The predictions (their `infer` jobs write the quicklooks too), evaluation summaries, season tables (their
    jobs draw the plots too), STAC catalogues and reproductions."""
    targets = []
    for experiment in experiments_to_run(config):
        targets += [
            f"results/predictions/{experiment}/{tile}/{date}.tif"
            for tile, date in SCENES
        ]
        targets.append(f"results/evaluation/{experiment}/summary.csv")
        targets += [f"results/season/{experiment}.csv", f"results/stac/{experiment}"]
        if config["experiments"][experiment]["thesis"]:
            targets.append(f"results/reproduction/{experiment}.md")
    return targets


# Input functions of the rules.
def preprocess_options(wildcards):
    """The shared scenes' options, or (results/scenes/{experiment}/...) an experiment's own."""
    if "experiment" in wildcards.keys():
        return own_scene_options(wildcards)
    return config["preprocess"]


def preprocess_inputs(wildcards):
    inputs = {"safe": str(PRODUCTS[(wildcards.tile, wildcards.date)].path)}
    if preprocess_options(wildcards)["dem"]:
        inputs["dem"] = dem_path(wildcards)
    return inputs


def train_inputs(wildcards):
    """The statistics only: they name the shards and are rewritten whenever a shard changes. Listing every
    shard here too made building the DAG quadratic (Snakemake scans train's inputs once per `infer` job).
    """
    return {"stats": f"results/datasets/{experiment_dataset(wildcards)}/stats.json"}


def run_configuration(wildcards):
    """The configuration sections behind an experiment's results (shown in the report)."""
    experiment = config["experiments"][wildcards.experiment]
    datasets = {
        name: config["datasets"][name] for name in [experiment.get("dataset")] if name
    }
    return {
        "experiment": {wildcards.experiment: experiment},
        "dataset": datasets,
        "preprocess": own_scene_options(wildcards) or config["preprocess"],
        "evaluation": config["evaluation"],
    }


def evaluation_class_set(wildcards):
    """The class set the labels are evaluated with: the trained experiment's dataset's, else the default."""
    if wildcards.experiment not in TRAINED:
        return None
    dataset = config["datasets"][experiment_dataset(wildcards)]
    return {key: dataset[key] for key in ("classes", "ignored_classes")}


def evaluation_summary_inputs(wildcards):
    evaluations = [
        f"results/evaluation/{wildcards.experiment}/{tile}/{date}.json"
        for tile, date in LABELLED
    ]
    return {"evaluations": evaluations, **split_stats(wildcards)}


def split_stats(wildcards):
    """The dataset statistics that hold the split roles of an experiment's dates (none: inference-only)."""
    if wildcards.experiment not in TRAINED:
        return {}
    return {"stats": f"results/datasets/{experiment_dataset(wildcards)}/stats.json"}


def predictions_of(wildcards):
    """Every mask of an experiment."""
    return [
        f"results/predictions/{wildcards.experiment}/{tile}/{date}.tif"
        for tile, date in SCENES
    ]


def quicklooks_of(wildcards):
    """Every quicklook of an experiment, in the order of predictions_of."""
    return [
        f"results/quicklooks/{wildcards.experiment}/{tile}/{date}.png"
        for tile, date in SCENES
    ]


def season_inputs(wildcards):
    return {"masks": predictions_of(wildcards), **split_stats(wildcards)}


def labelled_scenes(wildcards):
    """The `{tile}/{date}` of the scenes with a label (every scene, for a dataset of automatic labels)."""
    trained = wildcards.experiment in TRAINED
    scenes = (
        SCENES if trained and auto_labelled(experiment_dataset(wildcards)) else LABELLED
    )
    return [f"{tile}/{date}" for tile, date in scenes]


def shard_options(dataset: dict) -> dict:
    """The dataset options a shard is made with (its params): `compression` only when set, so that the raw
    shards made before the key existed are not remade."""
    options = {key: dataset[key] for key in SHARD_KEYS}  # SHARD_KEYS: rules/shards.smk
    if dataset["compression"] != "none":
        options["compression"] = dataset["compression"]
    return options
