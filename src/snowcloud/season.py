"""A season at a glance: how much of each tile was snow, cloud and water on each date, from the class counts the
masks recorded when they were written (their pixels are not read again), as a table and a plot.

`{experiment}.csv` (and the `season.csv` of `snowcloud predict`): one row per tile and date, sorted, with the
date's split role, the tile's pixels and valid pixels, `no_data` (share of the tile's pixels without data), the
share of the valid pixels in each of the model's classes (these sum to 1), `cloud_cover` (the cloud classes'
share of the valid pixels) and `snow_cover` (the snow classes' share of the cloud-free valid pixels, empty when
every valid pixel is cloud).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from snowcloud import dataset_stats
from snowcloud.atomic import atomic_output
from snowcloud.config import validated
from snowcloud.inventory import sensing_time
from snowcloud.mask import ClassCounts, mask_identity, read_class_counts

log = logging.getLogger(__name__)


class SeasonError(ValueError):
    """Masks that cannot be tabulated together; the message names the files."""


@dataclass(frozen=True)
class SeasonRow:
    """One tile and date: its split role and its mask's class counts."""

    tile: str
    date: str
    split: str
    counts: ClassCounts

    def shares(self) -> dict[str, float]:
        """Share of the valid pixels in each class (0 for every class of a mask without a valid pixel)."""
        valid = self.counts.valid
        return {name: count / valid if valid else 0.0 for name, count in zip(self.counts.classes, self.counts.counts)}

    def cover(self, options: dict) -> tuple[float | None, float | None]:
        """(snow_cover, cloud_cover): the snow classes' share of the cloud-free valid pixels, the cloud classes'
        share of the valid pixels (None where there is no such pixel)."""
        by_name = dict(zip(self.counts.classes, self.counts.counts))
        snow = sum(by_name.get(name, 0) for name in options["snow_classes"])
        cloud = sum(by_name.get(name, 0) for name in options["cloud_classes"])
        valid = self.counts.valid
        return (snow / (valid - cloud) if valid > cloud else None, cloud / valid if valid else None)


def split_role(key: tuple[str, str], roles: dict[tuple[str, str], str] | None, labelled: set[tuple[str, str]]) -> str:
    """A date's role: its role in the dataset's split (`unused` if labelled but in neither set), `unknown` for a
    labelled date of a model whose split is not known here (roles None), empty for an unlabelled date."""
    if key not in labelled:
        return ""
    return "unknown" if roles is None else roles.get(key, "unused")


def season_rows(
    masks: list[str | Path], stats_path: str | Path | None = None, labelled: list[str] | None = None
) -> list[SeasonRow]:
    """The rows of a season, sorted by tile and date. `labelled`: the `{tile}/{date}` that have labels, whose
    roles come from the dataset statistics `stats_path` (a trained experiment) or are `unknown` (none)."""
    roles = dataset_stats.split_roles(stats_path) if stats_path else None
    labelled_keys = {tuple(entry.split("/")) for entry in labelled or ()}
    rows: list[SeasonRow] = []
    first_of: dict[tuple[str, ...], str | Path] = {}  # the first mask of each class list
    for mask in masks:
        key = mask_identity(mask)
        rows.append(SeasonRow(*key, split_role(key, roles, labelled_keys), read_class_counts(mask)))
        first_of.setdefault(tuple(rows[-1].counts.classes), mask)
    if len(first_of) > 1:
        found = "; ".join(f"{mask} has {list(classes)}" for classes, mask in first_of.items())
        raise SeasonError(f"masks of models with other classes cannot share a season table: {found}")
    rows.sort(key=lambda row: (row.tile, row.date))
    return rows


def write_season_table(rows: list[SeasonRow], path: str | Path, options: dict) -> None:
    """The season table as CSV (see the module's docstring), written atomically."""
    options = validated(options, "season")
    classes = rows[0].counts.classes if rows else []
    columns = ["tile", "date", "split", "pixels", "valid_pixels", "no_data", *classes, "cloud_cover", "snow_cover"]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            counts = row.counts
            snow, cloud = row.cover(options)
            writer.writerow(
                {
                    "tile": row.tile,
                    "date": row.date,
                    "split": row.split,
                    "pixels": counts.pixels,
                    "valid_pixels": counts.valid,
                    "no_data": counts.nodata / counts.pixels if counts.pixels else 0.0,
                    **row.shares(),
                    "cloud_cover": "" if cloud is None else cloud,
                    "snow_cover": "" if snow is None else snow,
                }
            )


def plot_season(rows: list[SeasonRow], path: str | Path, options: dict, title: str) -> None:
    """PNG: snow cover (of the cloud-free valid pixels) and cloud cover (of the valid pixels) through the
    season, one line per tile; gaps where a date has no such pixel."""
    from matplotlib.figure import Figure

    options = validated(options, "season")
    figure = Figure(figsize=(10, 6), dpi=100, layout="constrained")
    snow_axes, cloud_axes = figure.subplots(2, 1, sharex=True)
    tiles = sorted({row.tile for row in rows})
    for tile in tiles:
        chosen = [row for row in rows if row.tile == tile]
        times = [sensing_time(row.date) for row in chosen]
        covers = [row.cover(options) for row in chosen]
        for axes, values in ((snow_axes, [s for s, _ in covers]), (cloud_axes, [c for _, c in covers])):
            axes.plot(times, [float("nan") if v is None else v for v in values], marker="o", markersize=3, label=tile)
    for axes, label in (
        (snow_axes, "snow cover\n(of cloud-free valid pixels)"),
        (cloud_axes, "cloud cover\n(of valid pixels)"),
    ):
        axes.set_ylim(-0.02, 1.02)
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
    if tiles:
        snow_axes.legend(title="tile", fontsize=8, ncol=min(len(tiles), 6), loc="upper right")
    else:
        snow_axes.text(0.5, 0.5, "no mask", ha="center", va="center", transform=snow_axes.transAxes)
    snow_axes.set_title(f"{title}: {len(rows)} masks of {len(tiles)} tile(s)", fontsize=10)
    figure.autofmt_xdate()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")


def write_season(
    masks: list[str],
    table_path: str,
    plot_path: str,
    options: dict,
    experiment: str,
    stats_path: str | None = None,
    labelled: list[str] | None = None,
) -> None:
    """The workflow's `season` job: an experiment's season table and plot from its masks' class counts."""
    rows = season_rows(masks, stats_path, labelled)
    write_season_table(rows, table_path, options)
    plot_season(rows, plot_path, options, experiment)
    log.info("season of %s: %d masks -> %s, %s", experiment, len(rows), table_path, plot_path)
