"""How well the demo model and the NDSI rule find the demo's clouds on the validation date: per-class IoU over all
evaluated pixels, and on thin-cloud and small-cloud pixels; with --run, also the wall and CPU time of the default
demo workflow (`snakemake --cores 2` in a fresh work directory).

    python benchmarks/bench_demo_clouds.py --run [--keep DIR]     # run the default demo, then measure
    python benchmarks/bench_demo_clouds.py --workdir DIR          # measure a finished run of the default demo

Pixels are those the workflow's evaluation counts (labelled, predicted, inside evaluation.margin_pixels).
Thin-cloud pixels: labelled cloud with opacity below THIN_BELOW (semi-transparent: the ground shows through);
the opacity comes from the demo generator itself (`snowcloud.demo.surface.render_surface`). Small-cloud pixels:
cloud objects (8-connected label pixels) under SMALL_CLOUD_PIXELS. On them the script prints the share each
method calls cloud (recall), and per-class IoU in their zone: those pixels and their surroundings (opacity
0.01-THIN_BELOW for thin cloud; within ZONE_PIXELS of a small object), where both false and missed cloud count.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.workflow_runs import REPO, snakemake, write_config  # noqa: E402

from snowcloud.baselines import BASELINES  # noqa: E402
from snowcloud.config import validate_config  # noqa: E402
from snowcloud.demo import demo_landscape, planned_products  # noqa: E402
from snowcloud.demo.clouds import THIN_BELOW  # noqa: E402
from snowcloud.demo.cloudstats import cloud_objects  # noqa: E402
from snowcloud.demo.product import GENERATION_ROWS, make_scene  # noqa: E402
from snowcloud.demo.surface import render_surface  # noqa: E402
from snowcloud.demo.windows import scene_grid  # noqa: E402
from snowcloud.evaluate import inside_margin  # noqa: E402
from snowcloud.labels import CLASSES, IGNORE_INDEX  # noqa: E402
from snowcloud.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402

SMALL_CLOUD_PIXELS = 1000  # cloud objects under 0.1 km2 (equivalent diameter under ~360 m) are small
ZONE_PIXELS = 3
CLOUD = CLASSES.index("cloud")


def run_default(root: Path) -> tuple[Path, float, float]:
    """The shipped config/config.yaml run with `snakemake --cores 2`: (work directory, wall s, CPU s)."""
    workdir = root / "demo"
    write_config(workdir, yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    snakemake(workdir, "--cores", "2", timeout=3600)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return workdir, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def opacity_map(demo: dict, tile: str, date: str) -> np.ndarray:
    """Cloud opacity (thick cloud or cirrus, whichever is more opaque) of a demo scene, from the generator."""
    landscape = demo_landscape(demo)
    grid = scene_grid(demo, tile, landscape)
    product = planned_products(demo, "unused", tiles=[tile], dates=[date])[(tile, date)]
    conditions = make_scene(product, grid, demo["seed"], landscape).conditions
    x = grid.x0 + 10 * (np.arange(grid.size) + 0.5)
    strips = []
    for row in range(0, grid.size, GENERATION_ROWS):
        y = grid.y0 - 10 * (np.arange(row, min(row + GENERATION_ROWS, grid.size)) + 0.5)
        state = render_surface(landscape, conditions, x, y, np.ones((len(y), len(x)), np.float32))
        strips.append(np.maximum(state.cloud, state.cirrus))
    return np.vstack(strips)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Square dilation by `pixels`."""
    grown = mask.copy()
    for _ in range(pixels):
        padded = np.pad(grown, 1)
        grown = np.logical_or.reduce(
            [
                padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            ]
        )
    return grown


def scene_maps(workdir: Path, config: dict, tile: str, date: str) -> dict[str, np.ndarray]:
    """Label, model prediction, NDSI rule, evaluated pixels and the thin and small cloud masks of one scene."""
    experiment = "demo"
    with rasterio.open(workdir / "results" / "predictions" / experiment / tile / f"{date}.tif") as source:
        model = source.read(1)
    with rasterio.open(workdir / config["labels"].format(tile=tile, date=date)) as source:
        label = source.read(1)
    scene_path = workdir / "results" / "scenes" / tile / f"{date}.tif"
    rule = np.concatenate(list(BASELINES["ndsi"](scene_path, config["evaluation"])))
    with rasterio.open(scene_path) as scene:
        window = rasterio.windows.Window(0, 0, scene.width, scene.height)
        inside = inside_margin(window, scene.shape, config["evaluation"]["margin_pixels"])
    evaluated = (label != IGNORE_INDEX) & (model != IGNORE_INDEX) & inside
    opacity = opacity_map(config["demo"], tile, date)
    ids, areas = cloud_objects(label == CLOUD)
    small_objects = ids > 0
    small_objects &= (areas < SMALL_CLOUD_PIXELS)[ids]
    return {
        "label": label,
        "model": model,
        "ndsi": rule,
        "evaluated": evaluated,
        "thin": (label == CLOUD) & (opacity < THIN_BELOW),
        "thin_zone": (opacity >= 0.01) & (opacity < THIN_BELOW),
        "small": small_objects,
        "small_zone": dilate(small_objects, ZONE_PIXELS),
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def measure(workdir: Path) -> None:
    config = validate_config(yaml.safe_load((workdir / "config" / "config.yaml").read_text()))
    dates = config["datasets"]["demo"]["split"]["validation_dates"]
    totals: dict[tuple[str, str], np.ndarray] = {}
    hits: dict[tuple[str, str], list[int]] = {}
    for tile in config["demo"]["tiles"]:
        for date in dates:
            maps = scene_maps(workdir, config, tile, date)
            for method in ("model", "ndsi"):
                for region, zone in (("all", None), ("thin", "thin_zone"), ("small", "small_zone")):
                    keep = maps["evaluated"] & (maps[zone] if zone else True)
                    confusion = confusion_matrix(maps[method][keep], maps["label"][keep], len(CLASSES))
                    totals[(method, region)] = totals.get((method, region), 0) + confusion
                    if zone:
                        pixels = maps["evaluated"] & maps[region]
                        found = int((maps[method][pixels] == CLOUD).sum())
                        counted = hits.setdefault((method, region), [0, 0])
                        counted[0] += found
                        counted[1] += int(pixels.sum())
    print(f"validation date(s) {', '.join(dates)}, tiles {', '.join(config['demo']['tiles'])}")
    for region in ("all", "thin", "small"):
        for method in ("model", "ndsi"):
            metrics = metrics_from_confusion(totals[(method, region)], CLASSES)
            ious = " ".join(f"{name} {fmt(metrics['iou'][name])}" for name in CLASSES)
            line = f"{region:5} {method:5} macro IoU {fmt(metrics['macro_iou'])} | {ious}"
            if region != "all":
                found, pixels = hits[(method, region)]
                line += f" | cloud found on {found / max(pixels, 1):.3f} of {pixels} {region}-cloud pixels"
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="work directory of a finished run of the default demo")
    parser.add_argument("--run", action="store_true", help="run the default demo first (timed)")
    parser.add_argument("--keep", type=Path, help="with --run: work in this directory and keep it")
    args = parser.parse_args()
    if args.run:
        root = args.keep or Path(tempfile.mkdtemp(prefix="bench_demo_clouds-"))
        workdir, wall, cpu = run_default(root)
        print(f"default demo, snakemake --cores 2: {wall:.0f} s wall, {cpu:.0f} CPU s (children)")
        measure(workdir)
    elif args.workdir:
        measure(args.workdir)
    else:
        parser.error("give --run or --workdir")


if __name__ == "__main__":
    main()
