"""Benchmark of the preprocess stage on a full-size demo tile (10980 x 10980 pixels by default).

Prints the time to make the demo tile (product + DEM + label), the bare decode of its 13 JP2 bands (the floor:
each band read whole through /vsizip/, GDAL threads as the job would have), and preprocess with the default
options (clip none, bilinear), with cubic resampling, with percentile clipping and without overviews: wall time, ratio to the
floor (goal <= 1.5 for the default), CPU time and its ratio, and peak resident memory (goal <= 3 GB). Every step runs in a process of its
own, so its peak memory is its own; the decode runs before and after the others and the faster one counts.

    python benchmarks/bench_preprocess.py                      # full tile, 2 threads, in benchmarks/output/
    python benchmarks/bench_preprocess.py --size 1098 --threads 4
    python benchmarks/bench_preprocess.py --remake             # make the demo tile again

Timings on a shared machine vary with the load of the other processes: compare ratios from one run; the CPU
time ratio is the steadier figure when the machine is busy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import rasterio

from snowcloud.demo import make_demo_data, planned_products
from snowcloud.preprocess import preprocess_scene
from snowcloud.safe import open_safe

TILE, DATE, SEED = "32TNS", "20220201T102209", 2023
RUNS = {
    "preprocess (default: clip none, bilinear)": {"clip": {"method": "none"}, "resampling": "bilinear"},
    "preprocess (clip none, cubic)": {"clip": {"method": "none"}, "resampling": "cubic"},
    "preprocess (clip percentile, bilinear)": {"clip": {"method": "percentile"}, "resampling": "bilinear"},
    "preprocess (default without overviews)": {"overviews": False},
}


def demo_config(size: int) -> dict:
    return {"enabled": True, "tiles": [TILE], "dates": [DATE], "size": size, "seed": SEED}


def paths(workdir: Path, size: int) -> dict[str, str]:
    root = workdir / f"size{size}"
    return {
        "raw_data": str(root / "raw"),
        "dem": str(root / "dem" / "T{tile}.tif"),
        "labels": str(root / "labels" / "T{tile}" / "{date}.tif"),
    }


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_gb() -> float:
    """Peak resident memory of this process and of its finished children, in GB (ru_maxrss is in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024 / 1e9


def step(name: str, workdir: Path, size: int, threads: int, options: dict) -> None:
    """Run one step in this process and print its figures as the last line (JSON)."""
    files = paths(workdir, size)
    product = planned_products(demo_config(size), files["raw_data"])[(TILE, DATE)].path
    start, cpu_start = time.perf_counter(), cpu_seconds()
    if name == "demo":
        make_demo_data(demo_config(size), files["raw_data"], files["dem"], files["labels"], threads=threads)
    elif name == "decode":
        with rasterio.Env(GDAL_NUM_THREADS=str(threads)):
            for band_path in open_safe(product).band_paths.values():
                with rasterio.open(band_path) as band:
                    band.read(1)
    else:
        output = Path(workdir) / f"size{size}" / "scene.tif"
        preprocess_scene(product, files["dem"].format(tile=TILE), output, options, threads=threads)
    print(
        json.dumps(
            {"wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu_start, "peak_rss_gb": peak_rss_gb()}
        )
    )


def run_step(name: str, args: argparse.Namespace, options: dict | None = None) -> dict:
    command = [sys.executable, __file__, "--step", name, "--size", str(args.size), "--threads", str(args.threads)]
    command += ["--workdir", str(args.workdir), "--options", json.dumps(options or {})]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"step {name} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10980, help="tile size in 10 m pixels (multiple of 6)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the job (GDAL decoding, COG writing)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "output" / "preprocess")
    parser.add_argument("--remake", action="store_true", help="make the demo tile even if it exists")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step(args.step, args.workdir, args.size, args.threads, json.loads(args.options))
        return

    product = planned_products(demo_config(args.size), paths(args.workdir, args.size)["raw_data"])[(TILE, DATE)].path
    print(f"preprocess benchmark: tile {TILE} {DATE}, {args.size} x {args.size} pixels, {args.threads} threads")
    if args.remake or not product.exists():
        demo = run_step("demo", args)
        print(
            f"making the demo tile (product, DEM, label): {demo['wall_s']:.1f} s wall, {demo['cpu_s']:.1f} s CPU, peak {demo['peak_rss_gb']:.2f} GB"
        )
    print(f"product: {product} ({product.stat().st_size / 1e6:.0f} MB)")

    first = run_step("decode", args)
    results = {name: run_step("preprocess", args, options) for name, options in RUNS.items()}
    second = run_step("decode", args)
    floor = min(first, second, key=lambda figures: figures["wall_s"])
    print(f"\n{'step':44s} {'wall s':>7s} {'x floor':>7s} {'CPU s':>7s} {'x floor':>7s} {'peak GB':>7s}")
    for name, figures in {"bare decode of the 13 JP2 bands (floor)": floor, **results}.items():
        wall, cpu = figures["wall_s"], figures["cpu_s"]
        print(
            f"{name:44s} {wall:7.1f} {wall / floor['wall_s']:7.2f} {cpu:7.1f} {cpu / floor['cpu_s']:7.2f} {figures['peak_rss_gb']:7.2f}"
        )
    print(
        f"decode runs: {first['wall_s']:.1f} s and {second['wall_s']:.1f} s wall; goals: default <= 1.5 x floor, peak <= 3 GB"
    )


if __name__ == "__main__":
    main()
