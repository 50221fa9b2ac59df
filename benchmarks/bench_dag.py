"""Time of `snakemake --dry-run` (building the DAG of every job) over many scenes.

    python benchmarks/bench_dag.py [--scenes 1000 2500 5000] [--tiles 5] [--repeat 1] [--profile-to FILE]
                                   [--against REV]

For each count it makes a work directory with that many scenes (--tiles tiles x scenes/tiles dates): each
product an empty file with a real L1C name under raw/, a label for every scene and a DEM per tile (empty files
too: a dry run reads no raster), and the repository's default configuration pointed at them (demo off). It
then times `snakemake --dry-run --cores 2` in a fresh process (nothing run yet: every job is planned) and
prints the wall and CPU time (user + system: less disturbed by other load on a shared machine than the wall
time), the number of jobs, the CPU time per 1000 scenes and the ratios to the smallest count (linear scaling:
the ratio of the counts). `--profile-to` writes a cProfile of the largest run (read it with
`python -m pstats FILE`). `--against REV` also times a git revision (a temporary worktree, its package
first on PYTHONPATH) on the same work directories right after this tree, and prints the CPU ratio: absolute
times differ between machines and loads, the ratio of one run does not. On a shared machine note the load (`uptime`), which the script prints.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from snowcloud.inventory import product_name

REPO = Path(__file__).resolve().parents[1]
TILES = ["32TLS", "32TMS", "32TNS", "32TPS", "32TQS", "33TUM", "33TVM", "33TWM"]


def scene_dates(count: int) -> list[str]:
    """`count` sensing times, one a day from 1 January 2018."""
    first = datetime.datetime(2018, 1, 1, 10, 23, 41)
    return [(first + datetime.timedelta(days=day)).strftime("%Y%m%dT%H%M%S") for day in range(count)]


def make_workdir(root: Path, tiles: list[str], dates: list[str]) -> None:
    """Empty products, labels and DEMs with real names, and a configuration that uses them."""
    for tile in tiles:
        (root / "dem").mkdir(parents=True, exist_ok=True)
        (root / "dem" / f"T{tile}.tif").touch()
        (root / "labels" / f"T{tile}").mkdir(parents=True, exist_ok=True)
        for date in dates:
            name = product_name("S2B", date, "0400", "065", tile, date[:8] + "T123456") + ".zip"
            folder = root / "raw" / tile
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).touch()
            (root / "labels" / f"T{tile}" / f"{date}.tif").touch()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(demo={"enabled": False}, raw_data="raw", dem="dem/T{tile}.tif", labels="labels/T{tile}/{date}.tif")
    config["datasets"]["demo"]["split"]["validation_dates"] = dates[1::10]
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def dry_run(root: Path, profile_to: Path | None = None, checkout: Path = REPO) -> tuple[float, float, int]:
    """Wall and CPU seconds of `snakemake --dry-run` in `root` with the workflow and package of `checkout`, and the
    number of jobs it plans."""
    python = [sys.executable, "-m", "cProfile", "-o", str(profile_to)] if profile_to else [sys.executable]
    command = [
        *python,
        "-m",
        "snakemake",
        "-s",
        str(checkout / "Snakefile"),
        "--directory",
        str(root),
        "--dry-run",
        "--cores",
        "2",
    ]
    environment = {**os.environ, "PYTHONPATH": str(checkout / "src")}  # ahead of the installed package
    began, cpu_before = time.perf_counter(), children_cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=environment)
    seconds, cpu = time.perf_counter() - began, children_cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"snakemake --dry-run failed in {root}:\n{(done.stdout + done.stderr)[-4000:]}")
    total = re.search(r"^total\s+(\d+)", done.stdout, flags=re.M)
    return seconds, cpu, int(total.group(1)) if total else -1


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, nargs="+", default=[1000, 2500, 5000])
    parser.add_argument("--tiles", type=int, default=5, choices=range(1, len(TILES) + 1))
    parser.add_argument("--repeat", type=int, default=1, help="dry runs per count; the fastest is reported")
    parser.add_argument("--profile-to", type=Path, help="write a cProfile of the largest count's run here")
    parser.add_argument("--against", metavar="REV", help="also time this git revision, alternating with this tree")
    args = parser.parse_args()
    print(
        f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
        f"(1, 5, 15 min) on {os.cpu_count()} CPUs"
    )
    first = None
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
        other = Path(tmp) / "against"
        if args.against:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(other), args.against],
                check=True,
                capture_output=True,
            )
        try:
            for scenes in sorted(args.scenes):
                root = Path(tmp) / str(scenes)
                tiles = TILES[: args.tiles]
                make_workdir(root, tiles, scene_dates(scenes // len(tiles)))
                seconds, cpu, jobs = min(dry_run(root) for _ in range(args.repeat))
                first = first or (scenes, seconds, cpu)
                print(
                    f"{scenes:6d} scenes ({len(tiles)} tiles), {jobs:6d} jobs: wall {seconds:6.1f} s, CPU {cpu:6.1f} s "
                    f"({1000 * cpu / scenes:4.1f} s per 1000 scenes); x{seconds / first[1]:4.2f} wall, "
                    f"x{cpu / first[2]:4.2f} CPU for x{scenes / first[0]:4.2f} scenes",
                    flush=True,
                )
                if args.against:
                    then, then_cpu, then_jobs = min(dry_run(root, checkout=other) for _ in range(args.repeat))
                    print(
                        f"       {args.against}: {then_jobs:6d} jobs: wall {then:6.1f} s, CPU {then_cpu:6.1f} s; "
                        f"this tree / {args.against}: x{cpu / then_cpu:4.2f} CPU",
                        flush=True,
                    )
                if args.profile_to and scenes == max(args.scenes):
                    dry_run(root, args.profile_to)
                    print(f"cProfile of this count written to {args.profile_to}")
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], check=False)
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
