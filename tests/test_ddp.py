"""Data-parallel training on 2 CPU processes (torchrun, gloo): the trajectory of one process with the same batch,
only rank 0 writes, and a SIGTERM to both ranks in the middle of epoch 2 resumes exactly on 2 ranks (and on 1).

Tolerance: the two runs compute the same sums in another order (BatchNorm statistics and gradients summed per rank,
then over ranks), so they agree to float32 rounding after one step (~1e-7 here) and drift apart as training
amplifies it. AdamW's eps is 1e-2 here, so that updates stay proportional to the gradient instead of
sign-like for near-zero gradients (which would turn a rounding difference into a step of lr): the first epoch's
history then agrees to 1e-6 and the weights after 2 epochs (12 steps) to 1e-3 (measured ~1e-4).
"""

import json
import logging
import math
import re
import shutil
import sys

import pytest
import torch
from helpers.training_shards import experiment_options, outputs, read_history, real_dataset, sigterm_once_marked

from snowcloud.checkpoint import load_model
from snowcloud.train import train_experiment
from snowcloud.training.distributed import requested_processes

AUGMENTATION = {"flip_p": 0.5, "channel_dropout_p": 0.2, "erase_p": 0.5, "erase_size": [2, 8]}

# One rank of a torchrun launch, with training batches of epoch 2 slowed down (0.3 s) and a marker file when it
# starts, so that the test can send SIGTERM in the middle of epoch 2.
CHILD = """
import json, pathlib, sys, time
from snowcloud.loader import ShardDataset
from snowcloud.train import train_experiment
from snowcloud.training.distributed import requested_processes
from snowcloud.workflow import logged

marker = pathlib.Path(sys.argv[1])
read_batch = ShardDataset.read_batch

def slow_in_epoch_2(self, keys, **options):
    if self.augment is not None and keys and keys[0][1] == 2:
        marker.touch()
        time.sleep(0.3)
    return read_batch(self, keys, **options)

ShardDataset.read_batch = slow_in_epoch_2
logged(None, train_experiment, **json.loads(sys.argv[2]))
"""


def options(**training):
    return experiment_options(
        epochs=2,
        batch_size=4,
        augmentation=AUGMENTATION,
        workers=0,
        device="cpu",
        optimizer={"lr": 1e-2, "eps": 1e-2},
        **training,
    )


def assert_rows_close(rows, expected, rel):
    assert len(rows) == len(expected)
    for row, reference in zip(rows, expected, strict=True):
        assert row.keys() == reference.keys()
        for key, value in reference.items():
            assert (row[key] == value == "") or math.isclose(float(row[key]), float(value), rel_tol=rel), key


def max_difference(path, reference_path):
    model, _ = load_model(path)
    reference, _ = load_model(reference_path)
    return max(
        (model.state_dict()[name].double() - tensor.double()).abs().max().item()
        for name, tensor in reference.state_dict().items()
        if tensor.is_floating_point()
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and two ranks (launched by the function itself, `training.gpus: 2`) over the same data."""
    root = tmp_path_factory.mktemp("ddp")
    common = {"stats_path": str(real_dataset(root / "data", dates=3, patches=12)), "experiment": "toy", "threads": 2}
    train_experiment(**common, **outputs(root / "one"), options=options())
    log_file, root_logger = logging.FileHandler(root / "two.log"), logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(log_file)
    root_logger.setLevel(logging.INFO)
    try:
        train_experiment(**common, **outputs(root / "two"), options=options(gpus=2))
    finally:
        root_logger.removeHandler(log_file)
        root_logger.setLevel(level)
        log_file.close()
    return root, common


def test_two_ranks_train_the_weights_of_one_process_with_the_same_batch(runs):
    root, _ = runs
    one, two = root / "one", root / "two"
    assert max_difference(two / "model.pt", one / "model.pt") < 1e-3
    rows, expected = read_history(two / "history.csv"), read_history(one / "history.csv")
    assert_rows_close(rows[:1], expected[:1], rel=1e-6)
    assert_rows_close(rows, expected, rel=1e-3)
    _, metadata = load_model(two / "model.pt")
    assert metadata["trained_with"].endswith("2 data-parallel ranks")
    assert not (two / "state").exists()  # rank 0 removed the state and the launch file after writing the outputs
    log = (root / "two.log").read_text()
    assert "data-parallel training on 2 processes" in log
    assert "batch 4 over 2 processes" in log
    assert log.count("Epoch: 2,") == 1  # rank 0 appended its lines; the other rank logs warnings only


def test_sigterm_to_both_ranks_in_epoch_2_resumes_exactly_on_two_ranks_and_closely_on_one(runs, tmp_path):
    root, common = runs
    run, marker, child_script = tmp_path / "run", tmp_path / "epoch-3-started", tmp_path / "child.py"
    child_script.write_text(CHILD)
    arguments = json.dumps({**common, "threads": 1, **outputs(run), "options": options()})
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(child_script),
        str(marker),
        arguments,
    ]
    returncode, stderr = sigterm_once_marked(command, marker, 240, "ranks (epoch 2)")

    assert returncode != 0
    stops = re.findall(r"training interrupted by SIGTERM at epoch 2 training step (\d+)/6; state saved", stderr)
    assert len(stops) >= 2 and len(set(stops)) == 1, stderr[-3000:]  # both ranks (and torchrun's summary), one step
    assert 1 <= int(stops[0]) < 6
    state = torch.load(run / "state" / "state.pt", weights_only=True)
    assert (state["progress"]["epoch"], state["progress"]["train_step"]) == (2, int(stops[0]))
    assert not (run / "model.pt").exists()
    shutil.copytree(run / "state", tmp_path / "on-one" / "state")

    train_experiment(**common, **outputs(run), options=options(gpus=2))
    assert max_difference(run / "model.pt", root / "two" / "model.pt") == 0
    assert read_history(run / "history.csv") == read_history(root / "two" / "history.csv")

    # the same state resumed by one process: the same trajectory up to rounding (`gpus` is not in the fingerprint)
    train_experiment(**common, **outputs(tmp_path / "on-one"), options=options())
    assert max_difference(tmp_path / "on-one" / "model.pt", root / "two" / "model.pt") < 1e-3
    rows = read_history(tmp_path / "on-one" / "history.csv")
    assert rows[:1] == read_history(root / "two" / "history.csv")[:1]  # epoch 1 comes from the state
    assert_rows_close(rows, read_history(root / "two" / "history.csv"), rel=1e-3)


def test_gpus_null_takes_every_gpu_the_job_sees_and_asking_for_more_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert requested_processes({"gpus": None}, cuda) == 4
    assert requested_processes({"gpus": 2}, cuda) == 2
    assert requested_processes({"gpus": None}, cpu) == 1
    assert requested_processes({"gpus": 2}, cpu) == 2  # CPU processes (gloo), as in the tests above
    with pytest.raises(ValueError, match="training.gpus is 8 but this job sees 4 GPU"):
        requested_processes({"gpus": 8}, cuda)
