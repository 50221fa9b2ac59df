"""A training job stopped mid-run (SIGTERM, as Slurm sends at the wall time or on scancel) leaves its saved
state and no output; the next `snakemake` run continues from that state and finishes the workflow.

This is the local variant: the signal goes to the training process of a `snakemake --cores 2` run. The Slurm
variant (scancel of the training job, resubmitted by the profile) is part of tests/test_slurm_profile.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from slurm_cluster import wait_until
from workflow_runs import SNAKEFILE, partial_files, planned_jobs, snakemake, tiny_config, write_config

from snowcloud.checkpoint import load_model

pytestmark = pytest.mark.workflow

# Enough epochs that the training still runs when the test stops it after epoch 1 (an epoch takes seconds).
EPOCHS = 4
MODEL_DIR = Path("results/models/demo")


def training_process(workdir: Path) -> int:
    """PID of the Python process running the train rule's script for `workdir` (not its loader workers, which
    are forked copies with the same command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(arg.decode(errors="replace").startswith(f"{workdir}/.snakemake/scripts/") and arg.endswith(b".train.py")
               for arg in arguments):  # fmt: skip
            found[int(entry.name)] = parent
    (main,) = [pid for pid, parent in found.items() if parent not in found]
    return main


def test_training_stopped_mid_run_resumes_on_the_next_run(tmp_path):
    workdir = tmp_path / "work"
    write_config(workdir, tiny_config({"experiments": {"demo": {"training": {"epochs": EPOCHS}}}}))
    snakemake(workdir, "--cores", "2", "datasets")  # everything the training reads

    command = ["timeout", "-s", "INT", "--kill-after=30", "600",
               sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), "--cores", "2"]  # fmt: skip
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
