import csv
import logging
import math
import os
import re
import signal

import numpy as np
import pytest
import torch
from helpers.training_shards import experiment_options, write_shard

from snowcloud.augment import Augmentation
from snowcloud.labels import CLASSES
from snowcloud.loader import ShardDataset
from snowcloud.metrics import confusion_matrix
from snowcloud.training.history import TIMING_COLUMNS, plot_curves, write_history
from snowcloud.training.loop import (
    EarlyStopping,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    confusion_on_device,
    train_steps,
    validation_steps,
)
from snowcloud.training.runtime import loader_workers, resolve_runtime
from snowcloud.training.state import trajectory_options


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    return {
        "train": write_shard(folder / "train.h5", 16, seed=1),
        "validation": write_shard(folder / "validation.h5", 6, seed=2),
        "few": write_shard(folder / "few.h5", 8, seed=3),
    }


def make_trainer(state_dir, train, validation, model=None, threads=1, **training):
    options = experiment_options(model, **{"workers": 0, **training})
    training = options["training"]
    augmentation = Augmentation.from_options(training["augmentation"])
    return Trainer(
        ShardDataset([(train, None)], augment=augmentation if augmentation.active else None, seed=training["seed"]),
        ShardDataset([(validation, None)]),
        model_options=options["model"],
        in_channels=5,
        training=training,
        class_weights=[1.0, 1.5, 1.5, 2.0],
        runtime=resolve_runtime(training, threads),
        state_path=state_dir / "state.pt",
        fingerprint_inputs={"training": trajectory_options(training), "model": options["model"]},
        class_names=CLASSES,
    )


def without_timing(history):
    return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS} for row in history]


def assert_same_weights(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


class SignalAtCall(torch.nn.Module):
    """Wraps the loss: the n-th call sends a signal to this very process (a kill at a known step)."""

    def __init__(self, loss_fn, call, signum):
        super().__init__()
        self.loss_fn, self.call, self.signum, self.calls = loss_fn, call, signum, 0

    def forward(self, logits, label):
        self.calls += 1
        if self.calls == self.call:
            os.kill(os.getpid(), self.signum)
        return self.loss_fn(logits, label)


def test_tiny_model_overfits_a_few_patches(shards, tmp_path):
    trainer = make_trainer(
        tmp_path,
        shards["few"],
        shards["few"],
        model={"base_channels": 16},
        epochs=15,
        batch_size=4,
        optimizer={"lr": 0.01},
        augmentation={"flip_p": 0.0},
    )
    result = trainer.run()
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.4 * first["train_loss"]
    assert last["val_loss"] < 0.5 * first["val_loss"]
    assert last["macro_iou"] > 0.8 and last["macro_iou"] > first["macro_iou"] + 0.4
    assert result.best_metrics["iou"]["water"] > 0.7
    assert result.best_epoch == min(result.history, key=lambda row: row["val_loss"])["epoch"]


def test_each_epoch_logs_thesis_lines_and_keeps_a_history(shards, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="snowcloud")
    trainer = make_trainer(tmp_path / "state", shards["train"], shards["validation"], epochs=2, batch_size=4)
    result = trainer.run()
    text = caplog.text
    assert re.search(r"Epoch: 1, train_loss: \d+\.\d{6}, test_loss: \d+\.\d{6}, EStop: 0/30", text)
    assert re.search(r"Epoch: 2, train_loss: .*, EStop: [01]/30", text)
    assert re.search(r"- union_over_inter_snow: \d\.\d{4}", text)
    assert re.search(r"- dice_coefficient_water: (\d\.\d{4}|nan)", text)
    assert "device cpu, float32" in text

    assert [row["epoch"] for row in result.history] == [1, 2]
    row = result.history[-1]
    for column in (
        "lr",
        "train_loss",
        "val_loss",
        "iou_snow",
        "f1_cloud",
        "precision_water",
        "recall_background",
        "class_accuracy_snow",
        "pixel_accuracy",
        "macro_iou",
        "micro_iou",
        "early_stopping_counter",
        "seconds",
        "patches_per_s",
    ):
        assert column in row, column
    assert row["lr"] == 0.001 and row["patches_per_s"] > 0
    # 16 training patches, batch 4: 4 steps; 6 validation patches: 2 batches (4 + 2)
    assert (trainer.train_steps, trainer.validation_steps) == (4, 2)
    # all 6 x 32 x 32 validation pixels but the unlabelled corner (2 x 3 per patch) are counted
    assert row["pixels"] == 6 * (32 * 32 - 6)

    # the state and a history copy stay beside the output until the run is done with them
    with open(tmp_path / "state" / "history.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]
    trainer.discard_state()
    assert not (tmp_path / "state").exists()


def test_steps_per_epoch_caps_and_partial_batches():
    assert train_steps(100, 32, None) == 3 and train_steps(100, 32, 2) == 2 and train_steps(10, 32, None) == 1
    assert validation_steps(100, 32, None) == 4 and validation_steps(100, 32, 1) == 1


def test_early_stopping_counts_like_the_thesis():
    stopper = EarlyStopping(patience=2)
    counters, stops = [], []
    for epoch, loss in enumerate([1.0, 1.1, 1.1, 1.0, 0.9, 1.2, 1.3, 1.4], start=1):
        stopper.update(loss, epoch)
        counters.append(stopper.counter)
        stops.append(stopper.should_stop)
    # worse: +1; equal to the best: unchanged; better: reset; stop once the counter exceeds the patience
    assert counters == [0, 1, 2, 2, 0, 1, 2, 3]
    assert stops == [False] * 7 + [True]
    assert (stopper.best_epoch, stopper.best_loss) == (5, 0.9)

    strict = EarlyStopping(patience=0, min_delta=0.1)
    strict.update(1.0, 1)
    assert not strict.update(0.95, 2) and strict.counter == 1  # better, but not by more than min_delta


def test_early_stopping_ends_the_run_and_restores_the_best_weights(shards, tmp_path):
    options = dict(batch_size=4, early_stopping={"patience": 0, "min_delta": 1e9})
    stopped = make_trainer(tmp_path / "a", shards["train"], shards["validation"], epochs=5, **options).run()
    # epoch 1 improves on infinity; epoch 2 cannot improve by 1e9: counter 1 > patience 0
    assert stopped.epochs_trained == 2 and stopped.best_epoch == 1
    one_epoch = make_trainer(tmp_path / "b", shards["train"], shards["validation"], epochs=1, **options).run()
    assert_same_weights(stopped.model, one_epoch.model)
    assert stopped.best_metrics == one_epoch.best_metrics


def test_a_stop_signal_saves_the_state_and_the_rerun_continues_exactly(shards, tmp_path):
    options = dict(epochs=3, batch_size=4, augmentation={"flip_p": 0.5, "erase_p": 0.5, "erase_size": [4, 12]})
    reference = make_trainer(tmp_path / "reference", shards["train"], shards["validation"], **options).run()

    interrupted = make_trainer(tmp_path / "run", shards["train"], shards["validation"], **options)
    # 4 training + 2 validation batches per epoch: call 11 is the first validation batch of epoch 2
    interrupted.loss_fn = SignalAtCall(interrupted.loss_fn, call=11, signum=signal.SIGUSR1)
    with pytest.raises(TrainingInterrupted) as caught:
        interrupted.run()
    message = str(caught.value)
    assert "interrupted by SIGUSR1 at epoch 2 validation step 1/2" in message
    assert f"state saved to {tmp_path / 'run' / 'state.pt'}; rerun to continue" in message
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers are restored

    resumed_trainer = make_trainer(tmp_path / "run", shards["train"], shards["validation"], **options)
    assert (resumed_trainer.progress.epoch, resumed_trainer.progress.validation_step) == (1, 0)  # not loaded yet
    resumed = resumed_trainer.run()
    assert_same_weights(resumed.model, reference.model)
    assert without_timing(resumed.history) == without_timing(reference.history)
    assert resumed.best_epoch == reference.best_epoch


def test_a_signal_during_the_last_step_of_an_epoch_stops_after_saving_that_epoch(shards, tmp_path, caplog):
    trainer = make_trainer(tmp_path, shards["train"], shards["validation"], epochs=3, batch_size=4)
    # 4 training + 2 validation batches per epoch: call 6 is the last validation batch of epoch 1
    trainer.loss_fn = SignalAtCall(trainer.loss_fn, call=6, signum=signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="by SIGTERM at epoch 1 validation step 2/2; state saved"):
        trainer.run()
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    # the validation pass was complete: the rerun only closes epoch 1 (scheduler, early stopping, history)
    assert (state["progress"]["epoch"], state["progress"]["validation_step"]) == (1, 2)
    assert state["history"] == []
    # `epochs` does not change the trajectory: lowered to 1, the state is resumed and the run ends after epoch 1
    caplog.set_level(logging.INFO, logger="snowcloud")
    resumed = make_trainer(tmp_path, shards["train"], shards["validation"], epochs=1, batch_size=4).run()
    assert "resuming from" in caplog.text and "epoch 1, training step 4/4, validation step 2/2" in caplog.text
    assert not list(tmp_path.glob("*set-aside*"))
    assert [row["epoch"] for row in resumed.history] == [1]


def test_a_state_of_other_settings_is_set_aside_not_resumed(shards, tmp_path, caplog):
    first = make_trainer(tmp_path, shards["train"], shards["validation"], epochs=2, batch_size=4)
    first.loss_fn = SignalAtCall(first.loss_fn, call=2, signum=signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at epoch 1 training step 2/4"):
        first.run()

    caplog.set_level(logging.WARNING, logger="snowcloud")
    changed = make_trainer(
        tmp_path, shards["train"], shards["validation"], epochs=2, batch_size=4, optimizer={"lr": 0.002}
    )
    result = changed.run()
    assert "training.optimizer.lr: 0.001 -> 0.002" in caplog.text
    assert "training starts afresh" in caplog.text
    assert (tmp_path / "state.set-aside-1.pt").exists()
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_state(shards, tmp_path):
    trainer = make_trainer(tmp_path, shards["train"], shards["validation"], epochs=3, batch_size=4)
    loss_fn = trainer.loss_fn
    trainer.loss_fn = lambda logits, label: loss_fn(logits, label) * (math.nan if trainer.progress.epoch == 2 else 1)
    with pytest.raises(TrainingDiverged, match=r"training loss is nan at epoch 2 step 1; .*last good state is kept"):
        trainer.run()
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["progress"]["epoch"] == 2 and state["progress"]["train_step"] == 0
    assert len(state["history"]) == 1 and math.isfinite(state["history"][0]["train_loss"])
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_validation_confusion_matches_the_numpy_reference():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randint(0, 4, (3, 16, 16), generator=generator)
    label = torch.randint(0, 4, (3, 16, 16), generator=generator)
    label[:, :4] = 255
    np.testing.assert_array_equal(
        confusion_on_device(prediction, label, 4).numpy(), confusion_matrix(prediction.numpy(), label.numpy(), 4)
    )


def test_cpu_runtime_is_float32_and_workers_follow_the_threads(caplog):
    caplog.set_level(logging.INFO, logger="snowcloud")
    runtime = resolve_runtime({"device": "auto", "amp": True, "channels_last": True, "workers": None}, threads=1)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert runtime.device.type == "cpu" and runtime.amp_dtype is None and not runtime.channels_last
    assert "runs in float32" in caplog.text and runtime.workers == 0
    assert loader_workers(None, threads=1) == 0 and loader_workers(3, threads=1) == 3
    assert loader_workers(None, threads=64) == max(0, len(os.sched_getaffinity(0)) - 1)
    with pytest.raises(RuntimeError, match="no GPU"):
        resolve_runtime({"device": "cuda"})


class RecordsDeterminism(torch.nn.Module):
    """Wraps the loss: records whether PyTorch's deterministic algorithms were on at each call."""

    def __init__(self, loss_fn):
        super().__init__()
        self.loss_fn, self.seen = loss_fn, set()

    def forward(self, logits, label):
        self.seen.add(torch.are_deterministic_algorithms_enabled())
        return self.loss_fn(logits, label)


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_algorithms_are_on_while_training_only_when_asked(tmp_path, shards, deterministic):
    trainer = make_trainer(
        tmp_path, shards["train"], shards["validation"], epochs=1, steps_per_epoch=2, deterministic=deterministic
    )
    trainer.loss_fn = RecordsDeterminism(trainer.loss_fn)
    trainer.run()
    assert trainer.loss_fn.seen == {deterministic}
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting is back
    assert ("deterministic algorithms" in trainer.runtime.describe()) == deterministic


def test_history_csv_and_curves_png(tmp_path):
    rows = [
        {
            "epoch": e,
            "lr": 0.001,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "iou_snow": 0.5 + e / 10,
            "iou_water": None,
            "f1_snow": 0.6,
            "f1_water": None,
            "macro_iou": 0.5,
            "macro_f1": 0.6,
            "seconds": 1.0,
            "patches_per_s": 10.0,
        }
        for e in (1, 2, 3)
    ]
    write_history(rows, tmp_path / "history.csv")
    with open(tmp_path / "history.csv") as handle:
        read = list(csv.DictReader(handle))
    assert [float(r["train_loss"]) for r in read] == [1.0, 0.5, 1 / 3]  # exact round trip
    assert read[0]["iou_water"] == ""
    plot_curves(rows, tmp_path / "curves.png", ["snow", "water"], best_epoch=3)
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "curves.png")
    assert image.shape[0] > 300 and image.shape[1] > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "history.csv"]  # no temporary leftovers


def test_train_experiment_writes_a_self_describing_model_history_and_curves(tmp_path):
    from helpers.training_shards import real_dataset

    from snowcloud.checkpoint import load_model
    from snowcloud.dataset_stats import load_stats
    from snowcloud.train import train_experiment

    stats_path = real_dataset(tmp_path / "data")
    stats = load_stats(stats_path)
    out = tmp_path / "results" / "models" / "toy"
    options = experiment_options(epochs=2, batch_size=8, workers=0, augmentation={"flip_p": 0.5, "erase_p": 0.3})
    train_experiment(
        stats_path, out / "model.pt", out / "history.csv", out / "curves.png", out / "state", "toy", options
    )

    raw = torch.load(out / "model.pt", weights_only=True)
    metadata = raw["metadata"]
    assert metadata["bands"] == stats["bands"] and len(metadata["bands"]) == 14
    assert metadata["normalisation"] == stats["normalisation"] and metadata["normalisation"]["name"] == "snowcloud-v1"
    assert metadata["patch_size"] == 16 and metadata["classes"] == ["background", "snow", "cloud", "water"]
    assert metadata["model_args"] == {"in_channels": 14, "n_classes": 4, "base_channels": 4}
    assert metadata["stats_digest"] == stats["digest"] and metadata["dataset"] == "toy"
    assert metadata["class_weights"] == stats["class_weights"]["values"]
    assert metadata["epochs_trained"] == 2 and metadata["best_epoch"] in (1, 2)
    assert metadata["training"]["optimizer"]["lr"] == 0.001 and metadata["package_version"]
    assert set(metadata["validation_metrics"]["iou"]) == {"background", "snow", "cloud", "water"}

    model, loaded = load_model(out / "model.pt", "cpu")
    assert loaded["best_epoch"] == metadata["best_epoch"]
    with torch.no_grad():
        assert model(torch.zeros(1, 14, 16, 16)).shape == (1, 4, 16, 16)

    with open(out / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in history] == [1, 2]
    best = history[metadata["best_epoch"] - 1]
    assert float(best["val_loss"]) == metadata["validation_loss"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "state").exists()  # done: the state was removed
