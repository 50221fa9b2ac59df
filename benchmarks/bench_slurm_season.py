"""A season of tiny demo dates through a real single-node Slurm with profiles/slurm, under one submission scheme
per run: is every date's job run, each with its own work, and how many submissions and how much time does it take?

    python benchmarks/bench_slurm_season.py [--dates 100] [--size 64] [--scheme plain arrays ...]
        [--array-limit 20] [--jobs 50] [--targets scenes shards] [--stall 120]

Schemes: `plain` is the profile as shipped (one Slurm job per Snakemake job); `arrays` adds
`--slurm-array-jobs preprocess,shard` with `--slurm-array-limit` and the profile's (or --jobs') `jobs` limit.
Each run gets a fresh work directory and the same test cluster (tests/slurm_cluster.py; needs root and Debian's
slurmctld slurmd slurm-client munge). A run is stopped as stalled when Slurm's queue stays empty for --stall
seconds while Snakemake still runs. Prints per run: exit, wall time, Slurm jobs and sbatch submissions, scenes
missing or holding another date's SENSING_TIME, shards missing, the plugin's "Trying to restart job" count and
its argument-length fallback. docs/slurm.md ("Many dates") has the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.slurm_cluster import SlurmCluster, site_profile, unavailable_reason  # noqa: E402
from helpers.slurm_season import missing_shards, run_season, scene_dates, season_config, season_dates  # noqa: E402
from helpers.workflow_runs import write_config  # noqa: E402

E2BIG_FALLBACK = "exceeds argument-length limits"


def scheme_options(scheme: str, args: argparse.Namespace) -> list[str]:
    options = ["--jobs", str(args.jobs)] if args.jobs else []
    if scheme == "arrays":
        options += ["--slurm-array-jobs", "preprocess,shard", "--slurm-array-limit", str(args.array_limit)]
    return options


def measure(cluster: SlurmCluster, root: Path, scheme: str, args: argparse.Namespace) -> None:
    dates = season_dates(args.dates)
    workdir = root / scheme
    write_config(workdir, season_config(args.dates, args.size))
    profile = site_profile(root / "profile")
    options = scheme_options(scheme, args)
    run = run_season(
        cluster,
        workdir,
        profile,
        args.targets,
        options,
        root / f"{scheme}.log",
        timeout=args.timeout,
        stall_seconds=args.stall,
    )
    tags = scene_dates(workdir, dates)
    missing = sum(tag is None for tag in tags.values())
    wrong = sum(tag is not None and tag != day for day, tag in tags.items())
    print(f"{scheme:7s} {' '.join(options)}")
    print(
        f"  exit {run.returncode} ({'stalled: queue empty for ' + str(args.stall) + ' s' if run.stalled else 'ran to the end'}), "
        f"{run.wall:.0f} s; {len(run.jobs)} Slurm jobs from {run.submissions} sbatch submissions"
    )
    print(
        f"  scenes: {missing} missing, {wrong} holding another date; shards missing: "
        f"{len(missing_shards(workdir, dates)) if 'shards' in args.targets else '-'}; "
        f"restarts: {run.restarts}; argument-length fallbacks: {run.log.count(E2BIG_FALLBACK)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dates", type=int, default=100)
    parser.add_argument("--size", type=int, default=72, help="demo.size: pixels per side, a multiple of 6")
    parser.add_argument("--scheme", nargs="+", choices=("plain", "arrays"), default=["plain", "arrays"])
    parser.add_argument("--array-limit", type=int, default=20)
    parser.add_argument("--jobs", help="Snakemake's --jobs (default: the profile's)")
    parser.add_argument("--targets", nargs="+", default=["scenes", "shards"])
    parser.add_argument("--stall", type=float, default=120)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if reason := unavailable_reason():
        sys.exit(f"no test cluster: {reason}")
    cluster = SlurmCluster()
    cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-slurm-season-") as scratch:
            root = args.keep or Path(scratch)
            print(f"{args.dates} dates of {args.size} px, targets {' '.join(args.targets)}; work in {root}")
            for scheme in args.scheme:
                measure(cluster, root, scheme, args)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
