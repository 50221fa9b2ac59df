"""A training job stopped mid-run (SIGTERM, as Slurm sends at the wall time or on scancel) leaves its saved
state and no output; the next `snakemake` run continues from that state and finishes the workflow. A Snakemake
killed with SIGKILL while its jobs run is finished by a plain rerun (profiles/default: rerun-incomplete).

This is the local variant: the signal goes to the training process of a `snakemake --cores 2` run. The Slurm
variant (scancel of the training job, resubmitted by the profile) is part of tests/test_slurm_profile.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers.slurm_cluster import wait_until
from helpers.workflow_runs import (
    DATES,
    REPO,
    TILE,
    partial_files,
    planned_jobs,
    snakemake,
    snakemake_command,
    tiny_config,
    write_config,
)

from snowcloud.checkpoint import load_model
from snowcloud.workflow import OWNER, release_stale_locks

pytestmark = pytest.mark.workflow

# Enough epochs that the training still runs when the test stops it after epoch 1 (an epoch takes seconds).
EPOCHS = 4
MODEL_DIR = Path("results/models/demo")


def script_processes(workdir: Path, rule: str) -> dict[int, int]:
    """PID -> parent PID of the Python processes running a rule's script for `workdir` (forked copies such as
    loader workers have the same command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(
            arg.decode(errors="replace").startswith(f"{workdir}/.snakemake/scripts/")
            and arg.endswith(f".{rule}.py".encode())
            for arg in arguments
        ):
            found[int(entry.name)] = parent
    return found


def training_process(workdir: Path) -> int:
    """PID of the Python process running the train rule's script for `workdir` (not its loader workers)."""
    found = script_processes(workdir, "train")
    (main,) = [pid for pid, parent in found.items() if parent not in found]
    return main


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_snakemake_killed_during_preprocess_is_finished_by_a_plain_rerun(tmp_path):
    """Only Snakemake is killed: its preprocess jobs finish their outputs, which it leaves marked incomplete."""
    workdir = tmp_path / "work"
    write_config(workdir, tiny_config())
    log_path = tmp_path / "killed-run.log"
    command = snakemake_command(workdir, "--cores", "2", "scenes")
    with open(log_path, "w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        started = wait_until(lambda: script_processes(workdir, "preprocess") or run.poll() is not None, 300, 0.05)
        jobs = script_processes(workdir, "preprocess")
        assert started and jobs and run.poll() is None, "no preprocess job ran:\n" + log_path.read_text()[-4000:]
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.kill()
        run.wait()
    assert wait_until(lambda: not any(map(alive, jobs)), 300, 0.1), "the orphaned preprocess jobs ended"
    assert list((workdir / ".snakemake" / "incomplete").iterdir()), "the kill left jobs marked incomplete"
    assert list((workdir / ".snakemake" / "locks").glob("*.lock")), "and its locks"

    rerun = snakemake(workdir, "--cores", "all", "scenes", check=False)  # the README's command, run from the checkout
    assert rerun.ok and "IncompleteFilesException" not in rerun.output, rerun.output[-4000:]
    assert sorted(p.name for p in (workdir / "results" / "scenes" / TILE).iterdir()) == [f"{d}.tif" for d in DATES]


def test_training_stopped_mid_run_resumes_on_the_next_run(tmp_path):
    workdir = tmp_path / "work"
    write_config(workdir, tiny_config({"experiments": {"demo": {"training": {"epochs": EPOCHS}}}}))
    snakemake(workdir, "--cores", "2", "datasets")  # everything the training reads

    command = snakemake_command(workdir, "--cores", "2", timeout=600)
    first_log = tmp_path / "first-run.log"
    with open(first_log, "w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    state = workdir / MODEL_DIR / "state" / "state.pt"
    assert wait_until(lambda: state.exists() or run.poll() is not None, 600, interval=0.1)
    assert run.poll() is None, "snakemake ended before the training saved a state:\n" + first_log.read_text()[-4000:]
    os.kill(training_process(workdir), signal.SIGTERM)
    assert run.wait(timeout=600) != 0

    train_log = workdir / "logs" / "train" / "demo.log"
    assert "training interrupted by SIGTERM" in train_log.read_text()
    assert state.exists()
    for output in ("model.pt", "history.csv", "curves.png"):
        assert not (workdir / MODEL_DIR / output).exists(), f"{output} must not exist after an interrupted training"
    assert partial_files(workdir / "results") == []
    assert "Missing output files: results/models/demo/model.pt" in "\n".join(
        job.reason for job in planned_jobs(workdir) if job.rule == "train"
    )

    snakemake(workdir, "--cores", "2")
    log_text = train_log.read_text()
    resumed = re.search(r"resuming from \S+ \(epoch (\d+)", log_text)
    assert resumed and int(resumed.group(1)) >= 2, "the first epoch, saved before the signal, is not trained again"
    assert "starts afresh" not in log_text
    model, metadata = load_model(workdir / MODEL_DIR / "model.pt")
    assert metadata["epochs_trained"] == EPOCHS
    assert list(pd.read_csv(workdir / MODEL_DIR / "history.csv")["epoch"]) == list(range(1, EPOCHS + 1))
    assert not state.parent.exists(), "the state is removed once model.pt is written"
    assert (workdir / "results" / "evaluation" / "demo" / "summary.csv").exists()
    assert partial_files(workdir / "results") == []
    assert planned_jobs(workdir) == []


@pytest.mark.parametrize(
    ("owner", "content", "released"),
    [("dead", "local", True), ("alive", "local", False), ("dead", "", False), ("other host", "local", False)],
)
def test_only_the_locks_of_a_dead_snakemake_that_ran_here_are_released(tmp_path, owner, content, released):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/scenes/32TNS/20220201T102209.tif\n")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = os.getpid() if owner == "alive" else int(finished.stdout)
    host = "elsewhere" if owner == "other host" else socket.gethostname()
    (locks / OWNER.format(host=host, pid=pid)).write_text(content)
    release_stale_locks(locks)
    assert (locks / "0.output.lock").exists() != released
