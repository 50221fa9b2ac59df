"""A season of tiny demo dates through a real test Slurm: the configuration, one watched Snakemake run, and the
checks that every date's jobs ran their own work. Used by tests/test_slurm_profile.py (the CI season test) and
benchmarks/bench_slurm_season.py (which compares submission schemes).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import rasterio

from helpers.slurm_cluster import LOCAL_OPTIONS, SlurmCluster, SlurmJob, run_slurm
from helpers.workflow_runs import TILE, snakemake_command, tiny_config

# The plugin logs this when it gives a job up for lost (its output missing after `latency-wait`) and submits it
# again: in a correct run it never appears.
RESTART = "Trying to restart job"


def season_dates(count: int) -> list[str]:
    """`count` daily dates of one orbit from 2021-11-01 (one demo scene each)."""
    first = date(2021, 11, 1)
    return [(first + timedelta(days=day)).strftime("%Y%m%dT102421") for day in range(count)]


def season_config(count: int, size: int) -> dict:
    """The tests' tiny demo with `count` dates of `size` px (shards only need a labelled patch per date)."""
    dates = season_dates(count)
    return tiny_config(
        {"demo": {"dates": dates, "size": size}, "datasets": {"demo": {"split": {"validation_dates": [dates[1]]}}}}
    )


@dataclass
class SeasonRun:
    returncode: int | None  # None: stopped as stalled
    wall: float
    log: str
    jobs: list[SlurmJob]
    stalled: bool

    @property
    def submissions(self) -> int:
        """sbatch calls: array tasks share the id of their array."""
        return len({job.id for job in self.jobs})

    @property
    def restarts(self) -> int:
        return self.log.count(RESTART)


def run_season(
    cluster: SlurmCluster,
    workdir: Path,
    profile: Path,
    targets: list[str],
    extra: list[str],
    log_path: Path,
    timeout: float,
    stall_seconds: float,
) -> SeasonRun:
    """Snakemake over `targets` through `profile`; stopped with SIGINT as stalled once Slurm's queue has been
    empty for `stall_seconds` while Snakemake still runs (a dropped job that nobody submits)."""
    first_job = cluster.max_job_id()
    command = snakemake_command(workdir, "--profile", str(profile), *LOCAL_OPTIONS, *extra, *targets, timeout=timeout)
    began = time.monotonic()
    stalled = False
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        empty_since = None
        while process.poll() is None:
            time.sleep(2)
            queued = run_slurm("squeue", "--noheader", "--format=%i", check=False).strip()
            empty_since = None if queued else (empty_since or time.monotonic())
            if empty_since and time.monotonic() - empty_since > stall_seconds:
                stalled = True
                process.send_signal(2)  # SIGINT: Snakemake cancels its jobs and exits
                process.wait(timeout=120)
    wall = time.monotonic() - began
    return SeasonRun(
        None if stalled else process.returncode, wall, log_path.read_text(), cluster.jobs(first_job), stalled
    )


def scene_dates(workdir: Path, dates: list[str]) -> dict[str, str | None]:
    """Each date -> the SENSING_TIME tag of its scene raster (None where the scene is missing)."""
    found: dict[str, str | None] = {}
    for day in dates:
        path = workdir / "results" / "scenes" / TILE / f"{day}.tif"
        if not path.exists():
            found[day] = None
            continue
        with rasterio.open(path) as scene:
            found[day] = scene.tags().get("SENSING_TIME")
    return found


def missing_shards(workdir: Path, dates: list[str], dataset: str = "demo") -> list[str]:
    return [day for day in dates if not (workdir / "results" / "shards" / dataset / TILE / f"{day}.h5").exists()]
