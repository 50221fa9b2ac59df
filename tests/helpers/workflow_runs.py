"""Running the real Snakefile on a tiny demo in a temporary work directory, and reading what a dry run plans.

Used by the Slurm profile, incremental-rerun and fault/resume tests. Every Snakemake call has a hard timeout
(`timeout -s INT`: Snakemake stops on SIGINT, not always on SIGTERM) so that a hung run fails the test.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from snowcloud.config import merge_into

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
TILE = "32TNS"
# One date per processing baseline and a validation date: small enough for a 2-core CI machine.
DATES = ["20211208T102421", "20220201T102209", "20220303T101829"]
VALIDATION_DATE = DATES[1]
OLD = 1_500_000_000  # 2017: an mtime older than every output
TINY = {
    "demo": {"enabled": True, "tiles": [TILE], "dates": DATES, "size": 96, "scale": "model"},  # every class in 96 px
    "datasets": {
        "demo": {
            "patch_size": 32,
            "sampler": {"patches_per_date": 12, "min_labelled_fraction": 0.5},
            "split": {"validation_dates": [VALIDATION_DATE]},
        }
    },
    "experiments": {
        "demo": {
            "model": {"base_channels": 4},
            "training": {"epochs": 2, "batch_size": 8},
            "inference": {"batch_size": 16, "tta": False},
        }
    },
}


def tiny_config(*overrides: dict) -> dict:
    """The repository's default configuration made tiny (TINY), then `overrides` merged in key by key."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for update in (TINY, *overrides):
        merge_into(config, copy.deepcopy(update))
    return config


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Run:
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def snakemake_command(workdir: Path, *arguments: str, timeout: float | None = None) -> list[str]:
    """The command that runs the repository's Snakefile in `workdir`; with `timeout`, under `timeout`, which
    sends SIGINT (Snakemake's clean stop) and kills 30 s later."""
    limit = ["timeout", "-s", "INT", "--kill-after=30", str(int(timeout))] if timeout else []
    return [*limit, sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *arguments]


def snakemake(workdir: Path, *arguments: str, timeout: int = 600, check: bool = True) -> Run:
    """Run the repository's Snakefile in `workdir`; `check` fails the calling test with the output's tail."""
    done = subprocess.run(snakemake_command(workdir, *arguments, timeout=timeout), capture_output=True, text=True)
    run = Run(done.returncode, done.stdout + done.stderr)
    if check and not run.ok:
        raise AssertionError(f"snakemake {' '.join(arguments)} exited {run.returncode}:\n{run.output[-6000:]}")
    return run


@dataclass(frozen=True)
class PlannedJob:
    rule: str
    outputs: tuple[str, ...]
    reason: str


def planned_jobs(workdir: Path, *arguments: str) -> list[PlannedJob]:
    """The jobs a dry run plans (rules without outputs, such as `all`, left out)."""
    jobs = []
    rule, outputs = None, ()
    for line in snakemake(workdir, "--dry-run", "--cores", "1", *arguments).output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule, outputs = match.group(1), ()
        elif (match := re.match(r"^\s+output: (.*)$", line)) and rule:
            outputs = tuple(match.group(1).split(", "))
        elif (match := re.match(r"^\s+reason: (.*)$", line)) and rule:
            if outputs:
                jobs.append(PlannedJob(rule, outputs, match.group(1)))
            rule = None
    return jobs


def jobs_by_rule(jobs: list[PlannedJob]) -> dict[str, list[str]]:
    """Rule -> the first output of each of its jobs, sorted: a compact, comparable view of a plan."""
    found: dict[str, list[str]] = {}
    for job in jobs:
        found.setdefault(job.rule, []).append(job.outputs[0])
    return {rule: sorted(outputs) for rule, outputs in sorted(found.items())}


def old_empty_file(path: Path) -> Path:
    """An empty stand-in for an input (a raw product, a DEM) whose mtime is older than every output, so that a
    workflow test that writes scene rasters itself plans no preprocess job."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (OLD, OLD))
    return path


def product_name(tile: str, date: str) -> str:
    """A real L1C product file name (processing baseline N0301) for a tile and date."""
    return f"S2A_MSIL1C_{date}_N0301_R065_T{tile}_{date[:8]}T235959.SAFE.zip"


def partial_files(root: Path) -> list[Path]:
    """Temporary files of snowcloud.atomic.atomic_output (".{name}.tmp-{pid}{suffix}") left under `root`."""
    return sorted(path for path in root.rglob(".*.tmp-*") if path.is_file())
