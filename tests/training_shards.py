"""Tiny, learnable HDF5 shards in the shard format, and validated training options, for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from snowcloud.config import validate_config

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


def real_dataset(root: Path, dates: int = 3, patches: int = 12, patch_size: int = 16) -> Path:
    """Real shards (scene raster + label through `shards.build_shard`) and their stats.json; the last date
    validates. Returns the stats path."""
    from test_datasets import build, stats_options

    from snowcloud.datasets import build_dataset_stats

    names = [f"202107{day:02d}T101559" for day in range(10, 10 + dates)]
    shard_paths = [
        build(root, "32TNS", date, seed, patches=patches, patch_size=patch_size) for seed, date in enumerate(names)
    ]
    stats_path = root / "stats.json"
    options = stats_options(validation_dates=names[-1:])
    build_dataset_stats(shard_paths, stats_path, root / "class_distribution.png", "toy", options)
    return stats_path
