"""profiles/slurm on a real single-node Slurm: the demo workflow runs as Slurm jobs with the profile's
resources, and a training job cancelled mid-run is resubmitted and resumes from its saved state.

Only the profile's SITE block (partition, account, GPUs) and the plugin's status options are changed for the
local cluster (tests/helpers/slurm_cluster.py: LOCAL_SITE, LOCAL_OPTIONS); nothing about the scheduler is mocked.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from helpers.slurm_cluster import (
    LOCAL_OPTIONS,
    PROFILE,
    SlurmCluster,
    SlurmJob,
    run_slurm,
    site_profile,
    slurm_cluster,  # noqa: F401 - the session fixture
    wait_until,
)
from helpers.slurm_season import RESTART, missing_shards, run_season, scene_dates, season_config, season_dates
from helpers.workflow_runs import (
    DATES,
    TILE,
    partial_files,
    planned_jobs,
    snakemake_command,
    tiny_config,
    write_config,
)

from snowcloud.checkpoint import load_model

GPU_RULES = {"train", "infer", "reproduction"}
# Enough epochs that the training is still running when it is cancelled after epoch 1 (an epoch takes seconds).
EPOCHS = 4
# A season: more dates than the profile's `jobs` (50) lets Snakemake hand to Slurm at once, in tiny scenes.
SEASON_DATES = 100
SEASON_SIZE = 72


def planned_resources(workdir: Path, profile: Path) -> dict[str, dict[str, str]]:
    """Rule -> the resources a dry run under `profile` gives its (first) job (a dry run lists the local rules
    among the others, with the default resources that they do not use)."""
    resources: dict[str, dict[str, str]] = {}
    rule = None
    run = subprocess.run(
        snakemake_command(workdir, "--dry-run", "--profile", str(profile)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for line in run.stdout.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif (match := re.match(r"^\s+resources: (.*)$", line)) and rule and rule != "all":
            resources.setdefault(rule, dict(item.split("=", 1) for item in match.group(1).split(", ")))
    return resources


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm_profile")
    write_config(workdir, tiny_config())
    return workdir


def test_profile_gives_every_rule_a_partition_runtime_and_memory(demo_workdir):
    resources = planned_resources(demo_workdir, PROFILE.parent)
    assert set(resources) >= {"demo_data", "preprocess", "shard", "train", "infer", "evaluate"}
    for rule, values in resources.items():
        assert int(values["runtime"]) > 0 and int(values["mem_mb"]) > 0, rule
        assert values["slurm_partition"] == ("gpu" if rule in GPU_RULES else "cpu"), rule
        assert values.get("gpu") == ("1" if rule in GPU_RULES else None), rule
        assert "slurm_account" not in values and "gpu_model" not in values, rule
    assert resources["train"]["runtime"] == "240"
    assert resources["train"]["slurm_extra"] == "--signal=TERM@600"
    assert all("slurm_extra" not in values for rule, values in resources.items() if rule != "train")


def test_site_block_sets_partition_account_gpus_and_gpu_model(demo_workdir, tmp_path):
    site = {
        "CPU_PARTITION": "'standard'",
        "GPU_PARTITION": "'a100'",
        "ACCOUNT": "'proj-snow'",
        "GPU_MODEL": "'a100'",
        "GPUS": "2",
        "TRAIN_GPUS": "4",
        "TRAIN_HOURS": "8",
    }
    resources = planned_resources(demo_workdir, site_profile(tmp_path / "site", site))
    for rule, values in resources.items():
        assert values["slurm_partition"] == ("a100" if rule in GPU_RULES else "standard"), rule
        assert values["slurm_account"] == "proj-snow", rule
        if rule in GPU_RULES:
            assert (values["gpu"], values["gpu_model"]) == ("4" if rule == "train" else "2", "a100"), rule
    assert resources["train"]["runtime"] == "480"
    assert resources["train"]["mem_mb"] == str(4 * 32000)  # per GPU: each data-parallel rank has its loader


def squeue_jobs_by_rule(jobs: list[SlurmJob]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for job in jobs:
        found.setdefault(job.rule, []).append(job.state)
    return found


def megabytes(size: str) -> float:
    """A Slurm memory figure ("32000M", "62.50G") in MB."""
    return float(size[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[size[-1]]


def job_details(job: SlurmJob) -> dict[str, str]:
    """`scontrol show job` as key=value pairs (TimeLimit, MinMemoryNode, NumCPUs, ...)."""
    text = run_slurm("scontrol", "show", "job", job.key, "--oneliner")
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


@pytest.mark.slurm
@pytest.mark.workflow
def test_demo_workflow_runs_through_the_slurm_profile(slurm_cluster: SlurmCluster, tmp_path):  # noqa: F811
    workdir = tmp_path / "work"
    write_config(workdir, tiny_config({"experiments": {"demo": {"training": {"epochs": EPOCHS}}}}))
    profile = site_profile(tmp_path / "profile")
    first_job = slurm_cluster.max_job_id()
    command = snakemake_command(
        workdir, "--profile", str(profile), *LOCAL_OPTIONS, "--slurm-keep-successful-logs", timeout=900
    )
    snakemake_log = tmp_path / "snakemake.log"
    with open(snakemake_log, "w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)

    def output() -> str:
        return snakemake_log.read_text()

    # Cancel the training job once it has saved a state, as a wall-time kill or an admin would.
    state = workdir / "results" / "models" / "demo" / "state" / "state.pt"

    def running_train_job() -> SlurmJob | None:
        return next((j for j in slurm_cluster.jobs(first_job) if j.rule == "train" and j.state == "RUNNING"), None)

    assert wait_until(lambda: state.exists() and running_train_job() is not None or run.poll() is not None, 600, 0.2)
    assert run.poll() is None, f"snakemake ended before training saved a state:\n{output()[-4000:]}"
    cancelled = running_train_job()
    run_slurm("scancel", cancelled.key)
    run.wait(timeout=900)
    assert run.returncode == 0, output()[-6000:]

    # Every job but those of the local rules ran in Slurm; the cancelled training was resubmitted (attempt 2) and
    # finished.
    jobs = slurm_cluster.jobs(first_job)
    by_rule = squeue_jobs_by_rule(jobs)
    n = len(DATES)
    assert {rule: len(states) for rule, states in by_rule.items()} == {
        "demo_data": 1,
        "preprocess": n,
        "shard": n,
        "train": 2,
        "infer": n,
        "evaluate": n,
    }
    assert {"localrule dataset_stats:", "localrule evaluation_summary:"} <= set(output().splitlines())
    assert by_rule["train"] == ["CANCELLED", "COMPLETED"]
    assert all(job.state == "COMPLETED" for job in jobs if job.key != cancelled.key)
    assert len({job.name for job in jobs}) == 1, "one Snakemake run submitted them all"
    # One sbatch per Snakemake job, no job arrays (docs/slurm.md, "Many dates").
    assert all(job.task is None for job in jobs) and len({job.id for job in jobs}) == len(jobs)

    # The profile's resources reached Slurm: wall time, memory (doubled on the resubmission), CPUs.
    first, second = (job for job in jobs if job.rule == "train")
    assert job_details(first)["TimeLimit"] == "04:00:00"
    assert megabytes(job_details(first)["MinMemoryNode"]) == 32000
    assert megabytes(job_details(second)["MinMemoryNode"]) == 64000
    preprocess = job_details(next(job for job in jobs if job.rule == "preprocess"))
    assert (preprocess["TimeLimit"], preprocess["NumCPUs"]) == ("00:30:00", "2")
    assert megabytes(preprocess["MinMemoryNode"]) == 4000
    assert all(job_details(job)["Partition"] == "debug" for job in jobs)

    # Job logs: the cancelled job's says the state was saved, the rule log of the rerun that it resumed.
    (slurm_log,) = (workdir / ".snakemake" / "slurm_logs" / "rule_train").rglob(f"{cancelled.id}.log")
    assert "training interrupted by SIGTERM" in slurm_log.read_text()
    train_log = (workdir / "logs" / "train" / "demo.log").read_text()
    assert "resuming from" in train_log
    assert f"SLURM jobid {second.id}" in output()

    # The outputs are whole and nothing temporary is left behind; a new run has nothing to do.
    model, metadata = load_model(workdir / "results" / "models" / "demo" / "model.pt")
    assert metadata["epochs_trained"] == EPOCHS
    assert not state.exists(), "the training state is removed once model.pt is written"
    for date in DATES:
        with rasterio.open(workdir / "results" / "predictions" / "demo" / TILE / f"{date}.tif") as prediction:
            classes = np.unique(prediction.read(1))
        assert set(classes.tolist()) <= {0, 1, 2, 3, 255}
        assert (workdir / "results" / "quicklooks" / "demo" / TILE / f"{date}.png").stat().st_size > 0
    summary = pd.read_csv(workdir / "results" / "evaluation" / "demo" / "summary.csv")
    assert len(summary) > 0
    assert partial_files(workdir / "results") == []
    assert planned_jobs(workdir) == []
    assert not run_slurm("squeue", "--noheader").strip(), "no job is left queued or running"


@pytest.mark.slurm
@pytest.mark.workflow
def test_a_season_of_dates_runs_through_the_slurm_profile(slurm_cluster: SlurmCluster, tmp_path):  # noqa: F811
    """100 dates through preprocess and shard with the profile as shipped (its `jobs` limit included): every date's
    jobs run once, each with its own date, and nothing waits for a job that was never submitted."""
    dates = season_dates(SEASON_DATES)
    workdir = tmp_path / "work"
    write_config(workdir, season_config(SEASON_DATES, SEASON_SIZE))
    run = run_season(
        slurm_cluster,
        workdir,
        site_profile(tmp_path / "profile"),
        ["scenes", "shards"],
        [],
        tmp_path / "snakemake.log",
        timeout=1800,
        stall_seconds=150,
    )
    assert not run.stalled, f"Slurm's queue stayed empty while Snakemake waited:\n{run.log[-4000:]}"
    assert run.returncode == 0, run.log[-6000:]
    print(f"{SEASON_DATES} dates: {run.wall:.0f} s, {len(run.jobs)} Slurm jobs from {run.submissions} submissions")

    assert scene_dates(workdir, dates) == {day: day for day in dates}, "each scene holds its own SENSING_TIME"
    assert missing_shards(workdir, dates) == []
    assert RESTART not in run.log
    by_rule = {rule: [job for job in run.jobs if job.rule == rule] for rule in ("demo_data", "preprocess", "shard")}
    assert {rule: len(jobs) for rule, jobs in by_rule.items()} == {"demo_data": 1, "preprocess": 100, "shard": 100}
    assert len(run.jobs) == run.submissions == 1 + 2 * SEASON_DATES, "one submission per job, each run once"
    assert all(job.state == "COMPLETED" for job in run.jobs)
    assert not run_slurm("squeue", "--noheader").strip(), "no job is left queued or running"
    assert partial_files(workdir / "results") == []
