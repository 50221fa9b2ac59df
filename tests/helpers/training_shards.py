"""Shards for the tests: tiny learnable ones in the shard format (training), real ones built from a written scene
and label through `shards.build_shard`, their options and validated training options."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np

from helpers.rasters import synthetic_scene, write_label, write_scene
from snowcloud.config import validate_config
from snowcloud.dataset_stats import build_dataset_stats
from snowcloud.shards import FORMAT as SHARD_FORMAT
from snowcloud.shards import build_shard
from snowcloud.training.history import TIMING_COLUMNS

BANDS = ["B02", "B03", "B04", "B08", "ELEVATION"]
NORMALISATION = {"name": "test-identity", "version": 1}


def write_shard(path: Path, n: int, seed: int, channels: int = len(BANDS), patch: int = 32) -> Path:
    """`n` patches of rectangles of classes 1..3 on background, some pixels unlabelled (255); channel c
    (c < 4) is bright where the class is c, plus noise, so a small network can learn the labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, patch, patch), np.uint8)
    for i in range(n):
        for _ in range(4):
            top, left = rng.integers(0, patch - 8, 2)
            height, width = rng.integers(patch // 5, patch // 2 + 4, 2)
            labels[i, top : top + height, left : left + width] = rng.integers(1, 4)
    labels[:, :2, :3] = 255
    images = rng.normal(0, 0.5, (n, channels, patch, patch)).astype(np.float32)
    for c in range(min(4, channels)):
        images[:, c] += labels == c
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as shard:
        shard.create_dataset("image", data=images.astype(np.float16), chunks=(1, channels, patch, patch))
        shard.create_dataset("label", data=labels, chunks=(1, patch, patch))
        shard.create_dataset("origin", data=np.zeros((n, 2), np.int32))
        shard.attrs.update(
            {
                "format": SHARD_FORMAT,
                "bands": json.dumps(BANDS[:channels]),
                "normalisation": json.dumps(NORMALISATION),
                "patch_size": patch,
            }
        )
    return path


def experiment_options(model: dict | None = None, **training) -> dict:
    """{"dataset", "model", "training"} of one experiment, with every schema default filled in."""
    config = {
        "datasets": {"toy": {}},
        "experiments": {"toy": {"dataset": "toy", "model": model or {"base_channels": 4}, "training": training}},
    }
    experiment = validate_config(config)["experiments"]["toy"]
    return {key: experiment[key] for key in ("dataset", "model", "training")}


def real_dataset(
    root: Path, dates: int = 3, patches: int = 12, patch_size: int = 16, class_set: dict | None = None
) -> Path:
    """Real shards (scene raster + label through `shards.build_shard`, with `class_set`: a dataset's classes and
    ignored_classes) and their stats.json; the last date validates. Returns the stats path."""
    names = [f"202107{day:02d}T101559" for day in range(10, 10 + dates)]
    shard_paths = [
        build_real_shard(root, "32TNS", date, seed, patches=patches, patch_size=patch_size, class_set=class_set)
        for seed, date in enumerate(names)
    ]
    stats_path = root / "stats.json"
    options = stats_options(validation_dates=names[-1:])
    build_dataset_stats(shard_paths, stats_path, root / "class_distribution.png", "toy", options)
    return stats_path


def shard_options(**overrides) -> dict:
    sampler = {
        "method": "random",
        "patches_per_date": 30,
        "seed": 3,
        "stride": None,
        "min_labelled_fraction": 1.0,
        "rare_classes": [3],
        "rare_fraction": 0.5,
    }
    base = {"normalisation": "snowcloud-v1", "elevation": True, "patch_size": 16, "sampler": sampler}
    return base | overrides


def stats_options(**split) -> dict:
    base = {"method": "date", "validation_dates": [], "validation_fraction": 0.15, "seed": 42}
    return {"class_weights": "inverse-ratio", "class_fraction": "patch-mean", "split": base | split}


def build_real_shard(
    root: Path, tile: str, date: str, seed: int, patches: int = 12, patch_size: int = 16, class_set: dict | None = None
) -> str:
    """A real shard of a 48 x 40 scene whose label holds water only for some seeds; with a `class_set`, the
    label holds thin clouds (4) too."""
    rng = np.random.default_rng(seed)
    scene = write_scene(root / "scenes" / tile / f"{date}.tif", synthetic_scene(rng, 48, 40))
    classes = rng.choice(np.array([0, 0, 1, 2], np.uint8), size=(48, 40))
    if seed % 2:
        classes[10:20, 10:14] = 3
    if class_set is not None:
        classes[30:40, 5:35] = 4
    label = write_label(root / "labels" / tile / f"{date}.tif", classes)
    output = root / "shards" / tile / f"{date}.h5"
    options = shard_options(patch_size=patch_size) | (class_set or {})
    options["sampler"] |= {"patches_per_date": patches}
    build_shard(scene, label, output, "demo", options)
    return str(output)


def outputs(folder: Path) -> dict[str, str]:
    """The output arguments of `train.train_experiment` for a run in `folder`."""
    return {
        "model_path": str(folder / "model.pt"),
        "history_path": str(folder / "history.csv"),
        "curves_path": str(folder / "curves.png"),
        "state_dir": str(folder / "state"),
    }


def read_history(path: Path) -> list[dict[str, str]]:
    """history.csv without its timing columns (which differ between identical runs)."""
    with open(path) as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def sigterm_once_marked(command: list[str], marker: Path, wait_s: float, what: str) -> tuple[int, str]:
    """Start a training run in its own process group, wait until it writes `marker`, then SIGTERM the whole group
    (as Slurm does to a job); its exit status and standard error."""
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + wait_s
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if not marker.exists():  # leave nothing running behind a failed test; say why the child stopped
        os.killpg(child.pid, signal.SIGKILL)
        _, stderr = child.communicate(timeout=60)
        raise AssertionError(f"the {what} never reached the marked point; its standard error ends:\n{stderr[-3000:]}")
    os.killpg(child.pid, signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    return child.returncode, stderr
