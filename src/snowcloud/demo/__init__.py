"""The embedded demo: synthetic but structurally real Sentinel-2 L1C products, DEMs and label masks.

`planned_products` names what the demo makes (pure, used when the workflow is parsed); `make_demo_data`
makes it: at real scale (`demo.scale`, the default) each tile's scenes are a window of the real-size tile
(`snowcloud.demo.windows`), in the scale model the whole tile drawn at `demo.size`. Products are `{raw_data}/T{tile}/{name}.SAFE.zip`; mission, relative orbit, processing baseline
(N0301 before 2022-01-25, N0400 with its -1000 radiometric offset from then) and generation time follow
from the sensing date as they would for real products. The same settings and seed give byte-identical files.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

from tqdm import tqdm

from snowcloud.demo.dem import write_dem
from snowcloud.demo.landscape import Landscape
from snowcloud.demo.product import make_scene, write_scene
from snowcloud.demo.windows import scene_grid
from snowcloud.inventory import Product, parse_product_name, product_name, scene_path

log = logging.getLogger(__name__)

BASELINE_04_00_FROM = "20220125"  # first day of processing baseline 04.00 (radiometric offset -1000)
RELATIVE_ORBIT = "065"  # the descending pass over the Swiss Alps at about 10:24 UTC
_REFERENCE_S2A_PASS = datetime(2021, 1, 1)


def processing_baseline(date: str) -> str:
    return "0400" if date[:8] >= BASELINE_04_00_FROM else "0301"


def mission(date: str) -> str:
    """S2A and S2B see a place on one relative orbit alternately, every 5 days."""
    days = (datetime.strptime(date[:8], "%Y%m%d") - _REFERENCE_S2A_PASS).days
    return ("S2A", "S2B")[(days // 5) % 2]


def generation_time(date: str) -> str:
    """Products are generated a few hours after sensing."""
    sensing = datetime.strptime(date, "%Y%m%dT%H%M%S")
    delay = timedelta(hours=2, minutes=(sensing.timetuple().tm_yday * 7) % 60, seconds=(sensing.day * 13) % 60)
    return (sensing + delay).strftime("%Y%m%dT%H%M%S")


def planned_products(demo: dict, raw_data: str | Path, tiles=(), dates=()) -> dict[tuple[str, str], Product]:
    """The products the demo makes, keyed (tile, date) like inventory.find_products; restricted to `tiles`
    and `dates` when they are given. No file is touched."""
    products = {}
    for tile in sorted(demo["tiles"]):
        for date in sorted(demo["dates"]):
            if (tiles and tile not in tiles) or (dates and date not in dates):
                continue
            name = product_name(
                mission(date), date, processing_baseline(date), RELATIVE_ORBIT, tile, generation_time(date)
            )
            products[(tile, date)] = parse_product_name(Path(raw_data) / f"T{tile}" / f"{name}.zip")
    return products


def make_demo_data(demo: dict, raw_data: str | Path, dem_pattern: str, labels_pattern: str, threads: int = 1) -> None:
    """Make every demo product (zipped), one DEM per tile at dem_pattern (covering the tile's scenes) and one
    label mask per scene at labels_pattern; with threads > 1, scenes are made in parallel (forked) processes."""
    landscape = demo_landscape(demo)
    grids = {tile: scene_grid(demo, tile, landscape) for tile in sorted(demo["tiles"])}  # fails on a bad tile
    tasks = [("dem", grids[tile], str(scene_path(dem_pattern, tile))) for tile in sorted(demo["tiles"])]
    tasks += [
        ("scene", (product, grids[product.tile]), str(scene_path(labels_pattern, *scene)))
        for scene, product in planned_products(demo, raw_data).items()
    ]
    # Forked workers: "spawn" would re-run the calling script (a Snakemake script has no __main__ guard).
    workers = max(1, min(threads, len(tasks))) if "fork" in get_all_start_methods() else 1
    scenes = len(tasks) - len(demo["tiles"])
    gdal_threads = max(1, threads // max(1, min(workers, scenes)))  # threads of each scene's JP2 encoding
    log.info("making %d demo files of size %d with %d worker(s)", len(tasks), demo["size"], workers)
    if workers == 1:
        results = (_make(demo, task, gdal_threads) for task in tasks)
        for _ in tqdm(results, total=len(tasks), desc="demo data", unit="file"):
            pass
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        futures = [pool.submit(_make, demo, task, gdal_threads) for task in tasks]
        for future in tqdm(futures, desc="demo data", unit="file"):
            future.result()


def demo_landscape(demo: dict) -> Landscape:
    """The landscape of the demo section of a configuration (seed, size, scale)."""
    return Landscape(demo["seed"], demo["size"], demo["scale"])


def _make(demo: dict, task: tuple, gdal_threads: int) -> None:
    """One unit of demo work: a tile's DEM or a scene's product and label mask."""
    kind, subject, path = task
    landscape = demo_landscape(demo)
    if kind == "dem":
        write_dem(landscape, subject, path)
        log.info("wrote %s", path)
    else:
        product, grid = subject
        scene = make_scene(product, grid, demo["seed"], landscape)
        write_scene(scene, landscape, path, gdal_threads=gdal_threads, thin_clouds=demo.get("thin_clouds", False))
