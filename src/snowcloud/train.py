"""Train stage: a dataset's shards and stats -> `model.pt`, `history.csv` and `curves.png` of one experiment.

Bands, normalisation spec, patch size and class weights come from stats.json (which the dataset stage checked
to be common to all shards), the split from `dataset_stats.load_split`. The resumable state lives in `state_dir`
(not a Snakemake output), so a killed or interrupted job continues where it stopped when the rule runs again;
it is removed once the outputs are written (docs/training.md, "Resume").

With more than one GPU (`training.gpus`, or every GPU the job has) the function starts itself once per GPU through
torchrun and waits; each of those processes trains its part of every batch, and rank 0 writes the outputs
(docs/training.md, "Several GPUs").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from snowcloud import __version__, dataset_stats
from snowcloud.accelerator import resolve_device
from snowcloud.augment import Augmentation
from snowcloud.checkpoint import save_model
from snowcloud.config import validated
from snowcloud.loader import ShardDataset
from snowcloud.provenance import file_stat
from snowcloud.training.distributed import World, joined, requested_processes
from snowcloud.training.history import plot_curves, write_history
from snowcloud.training.launch import launch_ranks
from snowcloud.training.loop import Trainer
from snowcloud.training.runtime import resolve_runtime
from snowcloud.training.state import trajectory_options

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
STATS_KEYS = ("bands", "normalisation", "patch_size", "classes", "class_weights", "digest")


def load_training_stats(stats_path: str | Path) -> dict[str, Any]:
    """The dataset stats, checked for what training needs."""
    stats = dataset_stats.load_stats(stats_path)
    missing = [key for key in STATS_KEYS if key not in stats]
    if missing:
        raise ValueError(f"{stats_path}: dataset stats lack {', '.join(missing)}; rebuild the dataset")
    return stats


def train_experiment(
    stats_path: str | Path,
    model_path: str | Path,
    history_path: str | Path,
    curves_path: str | Path,
    state_dir: str | Path,
    experiment: str,
    options: Mapping[str, Any],
    threads: int = 1,
) -> None:
    """Train (or continue training) the experiment's network and write model.pt, history.csv and curves.png:
    in this process, as one rank of a torchrun launch, or by launching one rank per GPU."""
    options = validated(options, "experiment")
    arguments = {
        "stats_path": stats_path,
        "model_path": model_path,
        "history_path": history_path,
        "curves_path": curves_path,
        "state_dir": state_dir,
        "experiment": experiment,
        "options": options,
        "threads": threads,
    }
    training = options["training"]
    device = resolve_device(str(training["device"]), "training.device")
    world = World.from_environment()
    if world is None:
        processes = requested_processes(training, device)
        if processes > 1:
            launch_ranks(processes, train_experiment, {**arguments, "threads": max(1, threads // processes)}, state_dir)
            return
        world = World()
    with joined(world, device) as world:
        _train(world, **arguments)


def _train(
    world: World,
    stats_path: str | Path,
    model_path: str | Path,
    history_path: str | Path,
    curves_path: str | Path,
    state_dir: str | Path,
    experiment: str,
    options: Mapping[str, Any],
    threads: int,
) -> None:
    training, model_options = options["training"], options["model"]
    stats = load_training_stats(stats_path)
    split = dataset_stats.load_split(stats_path)
    if not split["train"] or not split["validation"]:
        raise ValueError(f"{stats_path}: the split needs training and validation patches (see datasets.*.split)")
    shards = sorted({str(path) for part in split.values() for path, _ in part})
    class_weights = [float(weight) for weight in stats["class_weights"]["values"]]
    augmentation = Augmentation.from_options(training["augmentation"], stats["bands"], stats["normalisation"])
    train_set = ShardDataset(
        split["train"], augment=augmentation if augmentation.active else None, seed=training["seed"]
    )
    validation_set = ShardDataset(split["validation"])
    fingerprint_inputs = {
        "model": dict(model_options),
        "training": trajectory_options(training),
        "dataset": options["dataset"],
        "stats_digest": stats["digest"],
        "shards": [file_stat(path) for path in shards],  # a rebuilt shard makes a saved state stale
        "package_version": __version__,
    }
    log.info(
        "experiment %s: %d training and %d validation patches from %d shards; %d bands, %s, patch %d; class weights %s",
        experiment,
        len(train_set),
        len(validation_set),
        len(shards),
        len(stats["bands"]),
        stats["normalisation"].get("name"),
        stats["patch_size"],
        class_weights,
    )
    trainer = Trainer(
        train_set,
        validation_set,
        model_options=model_options,
        in_channels=len(stats["bands"]),
        training=training,
        class_weights=class_weights,
        class_names=stats["classes"],
        runtime=resolve_runtime(training, threads),
        state_path=Path(state_dir) / STATE_FILE,
        fingerprint_inputs=fingerprint_inputs,
        world=world,
    )
    result = trainer.run()
    if not world.main:
        return

    best = next(row for row in result.history if row["epoch"] == result.best_epoch)
    metadata = {
        "architecture": trainer.architecture,
        "model_args": trainer.model_args,
        "bands": list(stats["bands"]),
        "normalisation": stats["normalisation"],
        "classes": list(stats["classes"]),
        "class_set": stats["class_set"],
        "patch_size": int(stats["patch_size"]),
        "preprocess": stats.get("preprocess"),
        "experiment": experiment,
        "dataset": options["dataset"],
        "stats_digest": stats["digest"],
        "class_weights": class_weights,
        "training": dict(training),
        "trained_with": trainer.runtime.describe() + (f", {world.size} data-parallel ranks" if world.parallel else ""),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "epochs_trained": result.epochs_trained,
        "best_epoch": result.best_epoch,
        "validation_loss": best["val_loss"],
        "validation_metrics": result.best_metrics,
    }
    save_model(model_path, result.model, metadata)
    write_history(result.history, history_path)
    plot_curves(result.history, curves_path, stats["classes"], result.best_epoch)
    log.info(
        "best epoch %d of %d (validation loss %.6f, macro IoU %s); wrote %s",
        result.best_epoch,
        result.epochs_trained,
        best["val_loss"],
        best.get("macro_iou"),
        model_path,
    )
    trainer.discard_state()  # it has served its purpose: a later run of the rule trains afresh (docs/training.md)
