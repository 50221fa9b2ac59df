"""Dataset statistics over all shards of a dataset: class distribution, class weights, train/validation split.

``results/datasets/{dataset}/stats.json`` holds, per date and in total, the class distribution two ways
(``patch-mean``: the thesis's "Total Class Distribution", the mean over patches of each patch's class fractions;
``pixel``: pixel-weighted; both over the trained classes of the class set; ``encoded patch-mean``: the same
over every encoded class, the ignored ones too, as the thesis printed its five), the class weights by the configured formula, the split, and a digest of all of it
that the checkpoint records. Training reads the weights and the split from here (:func:`load_split`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np

from snowcloud.atomic import atomic_output
from snowcloud.config import validated
from snowcloud.labels import ClassSet, class_colours
from snowcloud.provenance import settings_digest
from snowcloud.shards import ShardError, class_columns, class_fractions, read_counts

log = logging.getLogger(__name__)

FORMAT = "snowcloud-stats/2"  # 2: class_set, encoded patch-mean
# "preprocess": the value-deciding preprocess options of the scenes (None in shards made before they were recorded)
CONSISTENT_ATTRIBUTES = ("bands", "normalisation", "patch_size", "preprocess", "class_set")


class DatasetError(ValueError):
    """Shards that cannot form a dataset, or a split that cannot be made; the message says which and why."""


# --- class weights ------------------------------------------------------------------------------------------

WEIGHT_FORMULAS = {
    "inverse-ratio": lambda f: (1 - f) / f,
    "sqrt-inverse-ratio": lambda f: np.sqrt((1 - f) / f),
    "inverse": lambda f: 1 / f,
    "normalised-inverse": lambda f: (1 / f) / (1 / f).sum(),
    "median-frequency": lambda f: np.median(f) / f,
}


def class_weights(fractions: list[float] | np.ndarray, formula: str) -> tuple[list[float], list[int]]:
    """Weights of the classes from their fractions, and the classes absent from the data.

    A class with fraction 0 gets the largest weight of the present classes (its weight multiplies no pixel of
    the training data, and a finite value keeps the loss finite); the median of median-frequency is over the
    present classes.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if formula not in WEIGHT_FORMULAS:
        raise DatasetError(f"unknown class weight formula '{formula}' (known: {', '.join(WEIGHT_FORMULAS)})")
    present = f > 0
    if not present.any():
        raise DatasetError("no labelled pixel in the dataset: class weights are undefined")
    weights = np.empty_like(f)
    weights[present] = WEIGHT_FORMULAS[formula](f[present])
    weights[~present] = weights[present].max()
    return weights.tolist(), np.flatnonzero(~present).tolist()


# --- distributions ------------------------------------------------------------------------------------------


def distribution(counts: np.ndarray, class_set: ClassSet) -> dict:
    """Class distribution of patches given their class counts (trained classes, ignored classes, 255)."""
    n_classes, n_encoded = len(class_set.names), len(class_set.encoded_names)
    totals = counts.sum(axis=0, dtype=np.int64)
    labelled_pixels = totals[:n_classes].sum()
    return {
        "patches": len(counts),
        "class_pixel_counts": {str(c): int(t) for c, t in zip(class_columns(class_set), totals)},
        "class_fraction": {
            "patch-mean": _patch_mean(counts, n_classes).tolist(),
            "pixel": (totals[:n_classes] / labelled_pixels if labelled_pixels else np.zeros(n_classes)).tolist(),
            "encoded patch-mean": _patch_mean(counts, n_encoded).tolist(),
        },
    }


def _patch_mean(counts: np.ndarray, n: int) -> np.ndarray:
    """Mean over the patches holding any of the first n classes of their fractions of those classes."""
    labelled = counts[:, :n].sum(axis=1) > 0
    return class_fractions(counts, n)[labelled].mean(axis=0) if labelled.any() else np.zeros(n)


def _read_shard(path: str) -> tuple[dict, np.ndarray]:
    try:
        return read_counts(path)
    except ShardError as error:
        raise DatasetError(str(error)) from error
    except (OSError, KeyError) as error:
        raise DatasetError(f"{path}: not a readable shard ({error})") from error


# --- split --------------------------------------------------------------------------------------------------


def stable_unit(seed: int, date: str) -> float:
    """A number in [0, 1) fixed by (seed, date): adding dates never changes that of another."""
    digest = hashlib.blake2b(f"{seed}/{date}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def validation_dates(dates: list[str], options: dict) -> set[str]:
    """The dates that validate under a date split (every tile of a date goes to the same set); at least one
    date in each set. Without `validation_dates` configured, a date validates when its stable unit is below
    `validation_fraction`; if that leaves a set empty, the date with the lowest (highest) unit moves over."""
    dates = sorted(set(dates))
    if len(dates) < 2:
        raise DatasetError(f"a date split needs at least two dates, the dataset has {len(dates)}: {dates}")
    if options["validation_dates"]:
        wanted = set(options["validation_dates"])
        chosen = wanted & set(dates)
        missing = sorted(wanted - chosen)
        if missing:
            log.warning("split.validation_dates not in the dataset: %s", ", ".join(missing))
        if not chosen or len(chosen) == len(dates):
            raise DatasetError(
                f"split.validation_dates {sorted(wanted)} leave {'no validation' if not chosen else 'no training'} "
                f"date among {dates}"
            )
        return chosen
    units = {date: stable_unit(options["seed"], date) for date in dates}
    chosen = {date for date, unit in units.items() if unit < options["validation_fraction"]}
    if not chosen:
        chosen = {min(units, key=units.get)}
    if len(chosen) == len(dates):
        chosen.remove(max(units, key=units.get))
    return chosen


def patch_split(patches: list[int], options: dict) -> list[tuple[list[int], list[int]]]:
    """(train, validation) patch indices per shard: a seeded permutation of all patches, the first
    ceil(fraction x total) validate (the mechanism of sklearn's train_test_split(test_size, random_state))."""
    total = sum(patches)
    n_validation = math.ceil(options["validation_fraction"] * total)
    if not 0 < n_validation < total:
        raise DatasetError(f"a patch split of {total} patches at {options['validation_fraction']} leaves a set empty")
    permutation = np.random.RandomState(options["seed"] % 2**32).permutation(total)
    validating = np.zeros(total, dtype=bool)
    validating[permutation[:n_validation]] = True
    starts = np.concatenate([[0], np.cumsum(patches)])
    return [
        (np.flatnonzero(~validating[a:b]).tolist(), np.flatnonzero(validating[a:b]).tolist())
        for a, b in zip(starts[:-1], starts[1:])
    ]


# --- the stage ----------------------------------------------------------------------------------------------


def build_dataset_stats(
    shards: list[str], stats_path: str | Path, plot_path: str | Path, dataset: str, options: dict
) -> None:
    """All shards of a dataset -> stats.json (distribution, weights, split, digest) and a class-distribution PNG."""
    options = validated(options, "dataset")
    if not shards:
        raise DatasetError(f"dataset {dataset} has no shards (no labelled scenes?)")
    shard_data, common = [], {}
    for path in map(str, shards):
        attributes, counts = _read_shard(path)
        for key in CONSISTENT_ATTRIBUTES:
            common.setdefault(key, (attributes.get(key), path))
            if attributes.get(key) != common[key][0]:
                raise DatasetError(f"{path}: {key} differs from that of {common[key][1]}; rebuild the shards")
        class_set = ClassSet.from_options(attributes["class_set"], path)
        entry = {
            "tile": attributes["tile"],
            "date": attributes["date"],
            "shard": path,
            **distribution(counts, class_set),
            "sampler": attributes["sampler"],
            "inputs": _content_hashes(attributes["inputs"]),
        }
        shard_data.append((entry, counts))
    shard_data.sort(key=lambda pair: (pair[0]["tile"], pair[0]["date"], pair[0]["shard"]))
    entries = [entry for entry, _ in shard_data]
    class_set = ClassSet.from_options(common["class_set"][0], dataset)
    total = distribution(np.concatenate([counts for _, counts in shard_data]), class_set)
    weights, absent = class_weights(total["class_fraction"][options["class_fraction"]], options["class_weights"])
    if absent:
        log.warning("dataset %s: classes %s have no pixels; weighted like the rarest present class", dataset, absent)
    stats = {
        "format": FORMAT,
        "dataset": dataset,
        "classes": list(class_set.names),
        "encoded_classes": list(class_set.encoded_names),
        **{key: value for key, (value, _) in common.items()},
        "options": options,
        "dates": entries,
        "total": total,
        "class_weights": {
            "formula": options["class_weights"],
            "fraction": options["class_fraction"],
            "values": weights,
            "absent_classes": absent,
        },
        "split": _split(entries, options["split"]),
    }
    stats["digest"] = digest(stats)
    log.info("dataset %s: %d shards, %d patches, weights %s", dataset, len(entries), total["patches"], weights)
    with atomic_output(stats_path) as tmp:
        tmp.write_text(json.dumps(stats, indent=1) + "\n")
    plot_class_distribution(stats, plot_path)


def _content_hashes(inputs: dict) -> dict:
    return {"scene": inputs["scene"]["sha256"], "label": [entry["sha256"] for entry in inputs["label"]]}


def _split(entries: list[dict], options: dict) -> dict:
    split = {
        "method": options["method"],
        "seed": options["seed"],
        "validation_fraction": options["validation_fraction"],
    }
    if options["method"] == "date":
        chosen = validation_dates([entry["date"] for entry in entries], options)
        split["validation_dates"] = sorted(chosen)
        split["members"] = [
            {"shard": e["shard"], "set": "validation" if e["date"] in chosen else "train"} for e in entries
        ]
        sizes = {
            name: sum(e["patches"] for e, m in zip(entries, split["members"]) if m["set"] == name)
            for name in ("train", "validation")
        }
    else:
        indices = patch_split([entry["patches"] for entry in entries], options)
        split["members"] = [
            {"shard": e["shard"], "train": train, "validation": validation}
            for e, (train, validation) in zip(entries, indices)
        ]
        sizes = {"train": sum(len(t) for t, _ in indices), "validation": sum(len(v) for _, v in indices)}
    split["patches"] = sizes
    return split


def digest(stats: dict) -> str:
    """Digest of everything in the stats but the digest itself."""
    return settings_digest({key: value for key, value in stats.items() if key != "digest"})


def load_stats(stats_path: str | Path) -> dict:
    with open(stats_path) as handle:
        stats = json.load(handle)
    if stats.get("format") != FORMAT:
        raise DatasetError(f"{stats_path}: not a {FORMAT} file")
    return stats


def load_split(stats_path: str | Path) -> dict[str, list[tuple[str, np.ndarray | None]]]:
    """{"train": [(shard, indices or None for all)], "validation": [...]}; shards without patches in a set are
    left out of it. Shard paths are as the workflow gave them (relative to its working directory)."""
    split = load_stats(stats_path)["split"]
    sets: dict[str, list[tuple[str, np.ndarray | None]]] = {"train": [], "validation": []}
    for member in split["members"]:
        if split["method"] == "date":
            sets[member["set"]].append((member["shard"], None))
            continue
        for name in sets:
            if member[name]:
                sets[name].append((member["shard"], np.asarray(member[name], dtype=np.int64)))
    return sets


# --- plot ---------------------------------------------------------------------------------------------------


def split_roles(stats_path: str | Path) -> dict[tuple[str, str], str]:
    """Role of each (tile, date) in the dataset's split: train or validation for a date split, mixed when its
    patches are divided by a patch split."""
    scene_of = {entry["shard"]: (entry["tile"], entry["date"]) for entry in load_stats(stats_path)["dates"]}
    roles: dict[tuple[str, str], str] = {}
    for role, members in load_split(stats_path).items():
        for shard, indices in members:
            role_here = role if indices is None else "mixed"
            roles[scene_of[shard]] = role_here if roles.get(scene_of[shard], role_here) == role_here else "mixed"
    return roles


def plot_class_distribution(stats: dict, plot_path: str | Path) -> None:
    """Horizontal stacked bars of the patch-mean class fractions: the total, then one bar per tile and date,
    with the patch count and the share of the last class (water by default) written beside each bar."""
    from matplotlib.figure import Figure  # here, not with the module: evaluation and season read splits only

    rows = [("total", stats["total"])] + [(f"{e['tile']} {e['date']}", e) for e in stats["dates"]]
    fractions = np.array([entry["class_fraction"]["patch-mean"] for _, entry in rows])
    figure = Figure(figsize=(9, 1.3 + 0.25 * len(rows)), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    names = stats["classes"]
    colours = class_colours(names)
    for c, name in enumerate(names):
        colour = np.array(colours[c]) / 255
        axes.barh(positions, fractions[:, c], left=left, color=colour, edgecolor="0.25", linewidth=0.4, label=name)
        left += fractions[:, c]
    axes.set_yticks(positions, [label for label, _ in rows], fontsize=8)
    axes.axhline(positions[0] - 0.5, color="black", linewidth=0.8)
    for position, (_, entry), fraction in zip(positions, rows, fractions):
        note = f"{entry['patches']} patches, {names[-1]} {fraction[-1]:.1%}"
        axes.text(1.01, position, note, va="center", fontsize=7, transform=axes.get_yaxis_transform())
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.set_xlabel("class fraction (mean over patches of each patch's labelled pixels)", fontsize=8)
    weights = ", ".join(f"{w:.3g}" for w in stats["class_weights"]["values"])
    axes.set_title(
        f"{stats['dataset']}: class distribution; weights ({stats['class_weights']['formula']}) {weights}", fontsize=9
    )
    figure.legend(ncols=len(names), loc="outside lower center", fontsize=8, frameon=False)
    with atomic_output(plot_path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
