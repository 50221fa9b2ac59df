"""Wall time of the demo workflow run locally versus through a real single-node Slurm with profiles/slurm,
and the time to bring that Slurm up and down.

    python benchmarks/bench_workflow.py [--config tiny|default] [--cores 2] [--keep DIR]

`tiny` is the demo the tests run (tests/helpers/workflow_runs.py: one tile, three dates, 96 x 96 pixels, two epochs);
`default` is config/config.yaml as shipped. Both runs use the same configuration in fresh work directories.
The Slurm run needs root and the Debian packages slurmctld slurmd slurm-client munge (tests/helpers/slurm_cluster.py
starts and stops the cluster); without them only the local figure is printed, with the reason. The cluster's
node advertises 16 CPUs, so Slurm may run more jobs at once than --cores allows locally: the figures compare
the two ways a user runs the workflow, not equal parallelism. The one exception is the training, which gets
--cores threads in both runs (the profile's 8 would oversubscribe a small machine). Prints every figure, the
ratio measured in this run, and each rule's span in both runs: locally, through Slurm as Snakemake saw it, and
as Slurm ran its jobs (the gap between the last two is the wait for the plugin's next status check). On a shared
machine run it twice and compare: a status check that just misses a finished level costs the next interval.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.slurm_cluster import (  # noqa: E402
    LOCAL_OPTIONS,
    SlurmCluster,
    SlurmJob,
    SlurmUnavailable,
    site_profile,
    unavailable_reason,
)
from helpers.workflow_runs import REPO, snakemake, tiny_config, write_config  # noqa: E402


def configuration(name: str) -> dict:
    if name == "tiny":
        return tiny_config()
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


Span = tuple[float, float]


def rule_timeline(workdir: Path, origin: datetime) -> dict[str, Span]:
    """Per rule, the seconds from `origin` to its first job's start and to its last job's end as Snakemake saw
    them, read from the newest Snakemake log in `workdir` (Snakemake logs whole seconds)."""
    log = max((workdir / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda path: path.stat().st_mtime)
    timeline: dict[str, list[datetime]] = {}
    now = origin
    for line in log.read_text().splitlines():
        if stamp := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line):
            now = datetime.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y")
        elif started := re.match(r"(?:local)?rule (\w+):$", line):
            timeline.setdefault(started.group(1), [now, now])
        elif finished := re.search(r"Finished jobid: \d+ \(Rule: (\w+)\)", line):
            timeline.setdefault(finished.group(1), [now, now])[1] = now
    return {rule: _span(origin, *times) for rule, times in timeline.items() if rule != "all"}


def slurm_timeline(jobs: list[SlurmJob], origin: datetime) -> dict[str, Span]:
    """Per rule, the seconds from `origin` to the first start and the last end of its Slurm jobs (as Slurm ran
    them, array tasks one by one)."""
    timeline: dict[str, list[datetime]] = {}
    for job in jobs:
        if job.started and job.ended:
            span = timeline.setdefault(job.rule, [job.started, job.ended])
            span[:] = min(span[0], job.started), max(span[1], job.ended)
    return {rule: _span(origin, *times) for rule, times in timeline.items()}


def _span(origin: datetime, start: datetime, end: datetime) -> Span:
    return (start - origin).total_seconds(), (end - origin).total_seconds()


def print_timelines(local: dict[str, Span], seen: dict[str, Span], ran: dict[str, Span]) -> None:
    """Where the time goes: each rule's span locally, as Snakemake saw it through Slurm, and as Slurm ran its jobs
    (the difference between the last two is the wait for submission and status checks)."""
    print("seconds from each run's start: rule, local start-end | through Slurm: seen by Snakemake | run by Slurm")
    for rule in sorted(local.keys() | seen.keys(), key=lambda rule: (local.get(rule) or seen[rule])[0]):
        spans = [
            f"{span[0]:5.0f} {span[1]:5.0f}" if span else "    -     -"
            for span in (local.get(rule), seen.get(rule), ran.get(rule))
        ]
        print(f"  {rule:20s} {spans[0]} | {spans[1]} | {spans[2]}")


def timed_run(workdir: Path, *arguments: str) -> tuple[float, datetime]:
    """Seconds the workflow took, and when it started."""
    origin = datetime.now()
    began = time.perf_counter()
    snakemake(workdir, *arguments, timeout=3600)
    return time.perf_counter() - began, origin


def run_locally(root: Path, config: dict, cores: int) -> tuple[float, dict[str, Span]]:
    workdir = root / "local"
    write_config(workdir, config)
    wall, origin = timed_run(workdir, "--cores", str(cores))
    return wall, rule_timeline(workdir, origin)


def run_on_slurm(root: Path, config: dict, cores: int) -> dict:
    """Start a test cluster, run the workflow through the profile, stop the cluster: each one timed. The training
    job gets the local run's `cores` threads, not the profile's 8 per GPU, so that both runs train alike."""
    cluster = SlurmCluster()
    cluster.start()
    try:
        workdir = root / "slurm"
        write_config(workdir, config)
        profile = site_profile(root / "profile")
        first_job = cluster.max_job_id()
        wall, origin = timed_run(workdir, "--profile", str(profile), *LOCAL_OPTIONS, "--set-threads", f"train={cores}")
        jobs = cluster.jobs(first_job)
    finally:
        began = time.perf_counter()
        cluster.stop()
        stop_seconds = time.perf_counter() - began
    submissions = len({job.id for job in jobs})
    return {
        "start": cluster.start_seconds,
        "wall": wall,
        "jobs": len(jobs),
        "submissions": submissions,
        "stop": stop_seconds,
        "seen": rule_timeline(workdir, origin),
        "ran": slurm_timeline(jobs, origin),
    }


def measure(config: dict, args: argparse.Namespace, root: Path) -> None:
    demo = config["demo"]
    print(
        f"demo workflow ({args.config}): {len(demo['tiles'])} tile(s) x {len(demo['dates'])} dates, "
        f"{demo['size']} px, {config['experiments']['demo']['training']['epochs']} epochs; work in {root}"
    )

    local, local_timeline = run_locally(root, config, args.cores)
    print(f"local   --cores {args.cores}: {local:8.1f} s")
    reason = unavailable_reason()
    if reason:
        print(f"slurm: not measured ({reason})")
        return
    try:
        slurm = run_on_slurm(root, config, args.cores)
    except SlurmUnavailable as error:
        print(f"slurm: not measured ({error})")
        return
    per_job = (slurm["wall"] - local) / slurm["jobs"]
    print(
        f"slurm   --profile     : {slurm['wall']:8.1f} s for {slurm['jobs']} Slurm jobs "
        f"(array tasks counted one by one) from {slurm['submissions']} sbatch submissions"
    )
    print(f"ratio slurm / local   : {slurm['wall'] / local:8.2f}")
    print(f"extra time per job    : {per_job:8.1f} s (submission, status polling, Snakemake start-up in the job)")
    print(f"Slurm start-up        : {slurm['start']:8.2f} s (munged, slurmctld, slurmd until the node is idle)")
    print(f"Slurm shut-down       : {slurm['stop']:8.2f} s")
    print_timelines(local_timeline, slurm["seen"], slurm["ran"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "default"), default="tiny")
    parser.add_argument("--cores", type=int, default=2, help="--cores of the local run")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        measure(configuration(args.config), args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-workflow-") as root:
            measure(configuration(args.config), args, Path(root))


if __name__ == "__main__":
    main()
