"""The training loop: AdamW, ReduceLROnPlateau, early stopping, AMP, exact resume, per-epoch metrics.

Every random choice is derived from the seed: initial weights from `torch.manual_seed(seed)`, the epoch's
patch order from `loader.epoch_order(n, seed, epoch)`, the augmentation of a patch from (seed, epoch, index)
inside the loader. The state saved after each epoch, or at the current step when SIGTERM / SIGUSR1 arrives,
therefore lets a rerun continue exactly where the run stopped: on the CPU the final weights and history equal
those of an uninterrupted run. Epochs are numbered from 1.

In a data-parallel training (`training.gpus`, `training/distributed.py`) every rank runs this loop on its part
of each batch; all ranks hold the same progress (loss, metrics and patch counts are those of the whole batch),
take stop decisions together, and only rank 0 writes the state and the history copy.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from snowcloud.checkpoint import plain
from snowcloud.loader import BatchLoader, EpochSampler, ShardDataset, batch_loader, part_sizes
from snowcloud.losses import build_loss
from snowcloud.metrics import metrics_from_confusion
from snowcloud.model import build_model, count_parameters
from snowcloud.provenance import settings_digest
from snowcloud.training.distributed import World, global_batchnorm
from snowcloud.training.history import epoch_log_lines, history_row, write_history
from snowcloud.training.interrupt import StopRequest, stop_signals
from snowcloud.training.runtime import Runtime, ignore_stop_signals_in_worker
from snowcloud.training.state import (
    capture_rng,
    load_state,
    restore_rng,
    save_state,
)

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """A stop signal arrived; the state was saved and a rerun continues from it."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good state is kept."""


@dataclass
class EarlyStopping:
    """The thesis's early stopping. With gain = best loss - loss: gain > min_delta is a new best (counter reset);
    gain < min_delta adds one to the counter; gain == min_delta (with min_delta 0: an equal loss) leaves it.
    Stop when the counter exceeds `patience`."""

    patience: int
    min_delta: float = 0.0
    best_loss: float = math.inf
    best_epoch: int | None = None
    counter: int = 0

    def update(self, loss: float, epoch: int) -> bool:
        """Account for an epoch's validation loss; True when it is the new best."""
        gain = self.best_loss - loss
        if gain > self.min_delta:
            self.best_loss, self.best_epoch, self.counter = loss, epoch, 0
            return True
        if gain < self.min_delta:
            self.counter += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.counter > self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "counter": self.counter}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_loss, self.best_epoch, self.counter = state["best_loss"], state["best_epoch"], state["counter"]


@dataclass
class Progress:
    """Where the run stands: the epoch, how far its training and validation passes got, their partial sums."""

    n_classes: int
    epoch: int = 1
    finished: bool = False
    train_step: int = 0
    train_loss_sum: float = 0.0  # sum over batches of mean loss x patches
    train_patches: int = 0
    train_seconds: float = 0.0
    validation_step: int = 0
    validation_loss_sum: float = 0.0
    validation_patches: int = 0
    validation_seconds: float = 0.0
    confusion: torch.Tensor | None = None  # validation confusion matrix so far (on the training device)

    def __post_init__(self) -> None:
        if self.confusion is None:
            self.confusion = torch.zeros(self.n_classes, self.n_classes, dtype=torch.int64)

    def next_epoch(self, finished: bool) -> Progress:
        return Progress(self.n_classes, epoch=self.epoch + 1, finished=finished)

    def state_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "confusion": self.confusion.cpu()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Progress:
        return cls(**state)


@dataclass
class FitResult:
    """The trained network (best validation-loss weights restored) and its record."""

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    best_metrics: dict[str, Any]
    epochs_trained: int


def train_steps(n: int, batch_size: int, cap: int | None) -> int:
    """Full batches per epoch (one partial batch when there are fewer patches than a batch), capped."""
    steps = max(1, n // batch_size)
    return min(steps, cap) if cap else steps


def validation_steps(n: int, batch_size: int, cap: int | None) -> int:
    """Batches covering the validation set (the last may be partial), capped."""
    steps = math.ceil(n / batch_size)
    return min(steps, cap) if cap else steps


def confusion_on_device(prediction: torch.Tensor, label: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts[t, p] over pixels whose label is a class (255 and anything else left out). Fixed-size output, no
    boolean indexing: no host synchronisation on a GPU."""
    cells = n_classes * n_classes
    pairs = torch.where(label < n_classes, label * n_classes + prediction, cells).flatten()
    counts = torch.zeros(cells + 1, dtype=torch.int64, device=pairs.device).scatter_add_(
        0, pairs, torch.ones_like(pairs)
    )
    return counts[:cells].view(n_classes, n_classes)


def make_optimizer(model: nn.Module, options: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW or RMSprop (`training.optimizer.name`) with the `training.optimizer` options."""
    if options["name"] == "rmsprop":
        return torch.optim.RMSprop(
            model.parameters(),
            lr=options["lr"],
            alpha=options["alpha"],
            eps=options["eps"],
            weight_decay=options["weight_decay"],
            momentum=options["momentum"],
        )
    return torch.optim.AdamW(
        model.parameters(),
        lr=options["lr"],
        betas=tuple(options["betas"]),
        eps=options["eps"],
        weight_decay=options["weight_decay"],
        amsgrad=options["amsgrad"],
    )


def make_loader(
    dataset: ShardDataset, sampler: EpochSampler, batch_size: int, runtime: Runtime, world: World | None = None
) -> BatchLoader:
    """Whole batches read in shard order by each worker (2-4x the patch-by-patch read) into staging memory
    allocated once, in the sampler's order (this rank's part of each in a data-parallel training), uint8 labels
    (made int64 on the device); the staging memory page-locked on a GPU; persistent workers that leave stop
    signals alone."""
    world = world or World()
    return batch_loader(
        dataset,
        sampler,
        batch_size,
        image_dtype=runtime.batch_dtype,
        label_dtype=torch.uint8,
        rank=world.rank,
        ranks=world.size,
        num_workers=runtime.workers,
        pin_memory=runtime.cuda,
        worker_init_fn=ignore_stop_signals_in_worker if runtime.workers else None,
    )


def train_step(
    runtime: Runtime,
    network: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    image: torch.Tensor,
    label: torch.Tensor,
    gradient_clip: float | None,
    world: World | None = None,
    sizes: Sequence[int] = (),
) -> torch.Tensor:
    """One optimisation step (forward under autocast, loss in float32, scaled backward, clipping) on a batch on
    the device (`Runtime.on_device`); the loss, still on the device. In a data-parallel training `image`, `label`
    are this rank's part of the batch (`sizes`: every rank's part), and the loss is that of the whole batch."""
    with runtime.autocast():
        logits = network(image)
    if world is not None:
        logits, label = world.whole_batch(logits, label, sizes)
    loss = loss_fn(logits, label)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if gradient_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(network.parameters(), gradient_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


class Trainer:
    """One training run over a training and a validation dataset whose items are addressed by (index, epoch)."""

    def __init__(
        self,
        train_set: ShardDataset,
        validation_set: ShardDataset,
        *,
        model_options: Mapping[str, Any],
        in_channels: int,
        training: Mapping[str, Any],
        class_weights: Sequence[float],
        runtime: Runtime,
        state_path: str | Path,
        fingerprint_inputs: Mapping[str, Any],
        class_names: Sequence[str],
        world: World | None = None,
    ) -> None:
        n_train, n_validation = len(train_set), len(validation_set)  # type: ignore[arg-type]
        if not n_train or not n_validation:
            raise ValueError(f"training needs patches in both parts: {n_train} training, {n_validation} validation")
        if len(class_weights) != len(class_names):
            raise ValueError(f"{len(class_weights)} class weights for {len(class_names)} classes")
        self.architecture = str(model_options["architecture"])
        self.model_args = {
            "in_channels": in_channels,
            "n_classes": len(class_names),
            **{key: value for key, value in model_options.items() if key != "architecture"},
        }
        self.training = training
        self.runtime = runtime
        self.class_names = tuple(class_names)
        self.n_classes = len(class_names)
        self.batch_size = int(training["batch_size"])
        self.epochs = int(training["epochs"])
        self.state_path = Path(state_path)
        self.fingerprint_inputs = plain(dict(fingerprint_inputs))
        self.seed = int(training["seed"])
        self.world = world or World()
        if self.batch_size < self.world.size:
            raise ValueError(
                f"training.batch_size {self.batch_size} is smaller than the {self.world.size} processes of the "
                "data-parallel training: raise it or train on fewer GPUs (training.gpus)"
            )

        torch.manual_seed(self.seed)
        model = build_model(self.architecture, **self.model_args)
        log.info("network %s %s: %d trainable parameters", self.architecture, self.model_args, count_parameters(model))
        self.model = runtime.prepare_model(global_batchnorm(model, runtime.device) if self.world.parallel else model)
        self.loss_fn = build_loss(
            training["loss"], class_weights, training["dice_weight"], reduction=training["loss_reduction"]
        ).to(runtime.device)
        self.optimizer = make_optimizer(self.model, training["optimizer"])
        scheduler = training["scheduler"]
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode=scheduler["mode"], factor=scheduler["factor"], patience=scheduler["patience"]
        )
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)
        self.stopper = EarlyStopping(training["early_stopping"]["patience"], training["early_stopping"]["min_delta"])
        self._use(Progress(self.n_classes))
        self.history: list[dict[str, Any]] = []
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_metrics: dict[str, Any] = {}

        self.train_steps = train_steps(n_train, self.batch_size, training["steps_per_epoch"])
        self.validation_steps = validation_steps(n_validation, self.batch_size, training["validation_steps"])
        self.train_sampler = EpochSampler(n_train, self.seed, shuffle=True, limit=self.train_steps * self.batch_size)
        self.validation_sampler = EpochSampler(
            n_validation, self.seed, shuffle=False, limit=self.validation_steps * self.batch_size
        )
        self.datasets = {"train": train_set, "validation": validation_set}
        self.loaders: dict[str, BatchLoader] = {}  # while `run` runs
        self.network = self.model  # compiled after a resumed state is loaded

    # --- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": settings_digest(self.fingerprint_inputs),
            "fingerprint_inputs": self.fingerprint_inputs,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "best_weights": self.best_weights,
            "best_metrics": self.best_metrics,
            "progress": self.progress.state_dict(),
            "history": self.history,
            "rng": capture_rng(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when saved without a grad scaler (CPU or bf16)
            self.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["early_stopping"])
        self.best_weights = state["best_weights"]
        self.best_metrics = state["best_metrics"]
        self._use(Progress.from_state_dict(state["progress"]))
        self.history = list(state["history"])
        restore_rng(state["rng"])

    @property
    def history_copy(self) -> Path:
        """The history so far, beside the state, for watching a long run."""
        return self.state_path.with_name("history.csv")

    def save(self) -> None:
        """Rank 0 writes the state (all ranks hold the same); the others wait until it is written."""
        if self.world.main:
            save_state(self.state_path, self.state_dict())
            write_history(self.history, self.history_copy)
        self.world.barrier()

    def discard_state(self) -> None:
        """Remove the state and its history copy (and the state folder when nothing else is left in it)."""
        for path in (self.state_path, self.history_copy):
            path.unlink(missing_ok=True)
        if self.state_path.parent.is_dir() and not any(self.state_path.parent.iterdir()):
            self.state_path.parent.rmdir()

    def resume(self) -> None:
        """Continue from a saved state of this same run, if there is one (rank 0 sets aside a stale state before
        the other ranks look)."""
        state = load_state(self.state_path, self.fingerprint_inputs) if self.world.main else None
        self.world.barrier()
        if not self.world.main:
            state = load_state(self.state_path, self.fingerprint_inputs)
        if state is not None:
            self.load_state_dict(state)
            p = self.progress
            where = "finished" if p.finished else f"epoch {p.epoch}, training step {p.train_step}/{self.train_steps}"
            if p.validation_step:
                where += f", validation step {p.validation_step}/{self.validation_steps}"
            log.info("resuming from %s (%s)", self.state_path, where)

    # --- the loop --------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        """Train until the last epoch or early stopping, resuming a saved state; best weights restored."""
        self.resume()
        self.network = self.runtime.compiled(self._parallel(self.model))
        log.info(
            "%d epochs of %d training steps and %d validation steps, batch %d%s",
            self.epochs,
            self.train_steps,
            self.validation_steps,
            self.batch_size,
            f" over {self.world.size} processes" if self.world.parallel else "",
        )
        self.loaders = {
            phase: make_loader(self.datasets[phase], self._samplers[phase], self.batch_size, self.runtime, self.world)
            for phase in ("train", "validation")
        }
        try:
            with stop_signals() as stop, self.runtime.algorithms():
                while not self.progress.finished:
                    self._train_pass(stop)
                    self._validation_pass(stop)
                    epoch = self.progress.epoch
                    self._end_epoch()
                    self._stop_if_requested(stop, f"at the end of epoch {epoch}", saved=True)
        finally:
            # Dropping the loaders shuts their persistent workers down now. They ignore SIGTERM, so they must be
            # told to exit (a terminate() at interpreter exit would not end them).
            self.loaders.clear()
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        assert self.stopper.best_epoch is not None
        return FitResult(self.model, self.history, self.stopper.best_epoch, self.best_metrics, len(self.history))

    def _parallel(self, model: nn.Module) -> nn.Module:
        """The model wrapped in DistributedDataParallel in a data-parallel training."""
        if not self.world.parallel:
            return model
        return DistributedDataParallel(model, device_ids=[self.world.local_rank] if self.runtime.cuda else None)

    def _use(self, progress: Progress) -> None:
        """Make `progress` the run's, its confusion matrix on the training device (where validation adds to it)."""
        progress.confusion = progress.confusion.to(self.runtime.device)
        self.progress = progress

    @property
    def _samplers(self) -> dict[str, EpochSampler]:
        return {"train": self.train_sampler, "validation": self.validation_sampler}

    def _part_sizes(self, phase: str, step: int) -> list[int]:
        """Each rank's number of patches in batch `step` (from 0) of the epoch's `phase`."""
        sampler = self._samplers[phase]
        total = min(sampler.n, sampler.limit or sampler.n)
        return part_sizes(min(self.batch_size, total - step * self.batch_size), self.world.size)

    def _stop_if_requested(self, stop: StopRequest, where: str, saved: bool = False) -> None:
        """After a stop signal (on any rank): save the state (unless just saved) and end the run with
        TrainingInterrupted."""
        if self.progress.finished or not self.world.any(stop.requested):
            return
        if not saved:
            self.save()
        raise TrainingInterrupted(
            f"training interrupted by {stop.signal_name or 'a stop signal to another rank'} {where}; "
            f"state saved to {self.state_path}; rerun to continue"
        )

    def _bar(self, total: int, initial: int, phase: str) -> tqdm:
        return tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {self.progress.epoch}/{self.epochs} {phase}",
            unit="batch",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
            mininterval=1.0,
            disable=not self.world.main,
        )

    def _checked(self, loss: torch.Tensor, phase: str, step: int) -> float:
        """The loss as a number; a NaN or infinite loss stops the run, keeping the last saved state."""
        value = loss.item()
        if not math.isfinite(value):
            kept = (
                f"the last good state is kept in {self.state_path}"
                if self.state_path.exists()
                else "no state was saved yet"
            )
            raise TrainingDiverged(
                f"{phase} loss is {value} at epoch {self.progress.epoch} step {step}; training stopped and {kept} "
                "(a rerun with the same settings diverges again: lower optimizer.lr, raise optimizer.eps or "
                "check the data)"
            )
        return value

    def _train_pass(self, stop: StopRequest) -> None:
        p = self.progress
        if p.train_step >= self.train_steps:
            return
        self.model.train()
        self.train_sampler.set_epoch(p.epoch, skip=p.train_step * self.batch_size)
        bar = self._bar(self.train_steps, p.train_step, "train")
        started, patches_now = time.perf_counter(), 0
        pending: tuple[torch.Tensor, int, int] | None = None  # read one step late: no sync per step on a GPU

        def record(loss: torch.Tensor, patches: int, step: int) -> None:
            nonlocal patches_now
            value = self._checked(loss, "training", step)
            p.train_loss_sum += value * patches
            p.train_patches += patches
            patches_now += patches
            rate = patches_now / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{value:.4f}", patches_s=f"{rate:.1f}", refresh=False)

        for image, label in self.runtime.on_device(self.loaders["train"]):
            sizes = self._part_sizes("train", p.train_step)
            loss = train_step(
                self.runtime,
                self.network,
                self.loss_fn,
                self.optimizer,
                self.scaler,
                image,
                label,
                self.training["gradient_clip"],
                self.world,
                sizes,
            )
            if pending is not None:
                record(*pending)
            p.train_step += 1
            pending = (loss, sum(sizes), p.train_step)
            bar.update()
            if self.world.any(stop.requested):
                break
        if pending is not None:
            record(*pending)
        p.train_seconds += time.perf_counter() - started
        bar.close()
        self._stop_if_requested(stop, f"at epoch {p.epoch} training step {p.train_step}/{self.train_steps}")

    def _validation_pass(self, stop: StopRequest) -> None:
        p = self.progress
        if p.validation_step >= self.validation_steps:
            return
        self.model.eval()
        self.validation_sampler.set_epoch(p.epoch, skip=p.validation_step * self.batch_size)
        bar = self._bar(self.validation_steps, p.validation_step, "validation")
        started = time.perf_counter()
        with torch.no_grad():
            for image, label in self.runtime.on_device(self.loaders["validation"]):
                with self.runtime.autocast():
                    logits = self.network(image)
                logits, label = self.world.whole_batch(logits, label, self._part_sizes("validation", p.validation_step))
                loss = self.loss_fn(logits, label)
                p.confusion += confusion_on_device(logits.argmax(dim=1), label, self.n_classes)
                p.validation_step += 1
                p.validation_loss_sum += self._checked(loss, "validation", p.validation_step) * len(label)
                p.validation_patches += len(label)
                bar.update()
                if self.world.any(stop.requested):
                    break
        p.validation_seconds += time.perf_counter() - started
        bar.close()
        self._stop_if_requested(stop, f"at epoch {p.epoch} validation step {p.validation_step}/{self.validation_steps}")

    def _end_epoch(self) -> None:
        p = self.progress
        train_loss = p.train_loss_sum / p.train_patches
        val_loss = p.validation_loss_sum / p.validation_patches
        metrics = metrics_from_confusion(p.confusion.cpu().numpy(), self.class_names)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(val_loss)
        if self.stopper.update(val_loss, p.epoch):
            self.best_weights = {name: t.detach().cpu().clone() for name, t in self.model.state_dict().items()}
            self.best_metrics = metrics
        row = history_row(
            p.epoch,
            lr,
            train_loss,
            val_loss,
            metrics,
            self.stopper.counter,
            seconds=p.train_seconds + p.validation_seconds,
            patches_per_s=p.train_patches / max(p.train_seconds, 1e-9),
        )
        self.history.append(row)
        for line in epoch_log_lines(row, metrics, self.stopper.patience):
            log.info(line)
        finished = p.epoch >= self.epochs or self.stopper.should_stop
        if self.stopper.should_stop:
            log.info(
                "early stopping after epoch %d: no improvement for %d epochs; best epoch %d (validation loss %.6f)",
                p.epoch,
                self.stopper.counter,
                self.stopper.best_epoch,
                self.stopper.best_loss,
            )
        self._use(p.next_epoch(finished))
        self.save()
