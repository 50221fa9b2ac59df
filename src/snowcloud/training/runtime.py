"""Where and how the network runs: device, precision, memory format, CPU threads, loader workers."""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from snowcloud.accelerator import autocast_dtype, resolve_device
from snowcloud.loader import BatchLoader

log = logging.getLogger(__name__)

# Signals that ask the training process to save its state and stop (what Slurm sends before the wall time).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class Runtime:
    """The execution settings derived from `training` options and the machine."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: float32
    channels_last: bool
    compile: bool
    workers: int
    deterministic: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def needs_grad_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def autocast(self) -> AbstractContextManager:
        """Mixed precision around the forward pass, or nothing."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @contextmanager
    def algorithms(self) -> Iterator[None]:
        """While training: PyTorch's deterministic algorithms if `deterministic` is set (an operation without one
        warns and runs as usual), restoring the process's previous setting afterwards."""
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move the network to the device (channels-last if asked); weights must be loaded before `compiled`."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, model: nn.Module) -> nn.Module:
        return torch.compile(model) if self.compile else model

    @property
    def batch_dtype(self) -> torch.dtype:
        """Images cross to a GPU as float16 (what the shards hold: half the bytes, nothing lost)."""
        return torch.float16 if self.cuda else torch.float32

    def to_device(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch as the network takes it: float32 images (channels-last if set) and int64 labels, on the device."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        image = image.to(self.device, non_blocking=True).to(torch.float32, memory_format=memory_format)
        return image, label.to(self.device, non_blocking=True).long()

    def on_device(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches through `to_device`. On a GPU each batch is copied and converted on a side stream while
        the network computes on the previous one, so the copy is off the critical path (from pinned memory);
        before the next batch is received, the copy from the batch `BatchLoader.HOLD` back is waited for, since
        the loader may then reuse its memory."""
        if not self.cuda:
            yield from (self.to_device(image, label) for image, label in batches)
            return
        compute, copy = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        ready, copied = None, deque()
        for image, label in batches:
            with torch.cuda.stream(copy):
                moved = self.to_device(image, label)
            copied.append(copy.record_event())
            if ready is not None:
                yield ready  # the caller queues its work on the previous batch first
            compute.wait_stream(copy)  # then the compute stream waits for this copy
            for tensor in moved:
                tensor.record_stream(compute)  # made on the copy stream, used on the compute stream
            ready = moved
            if len(copied) == BatchLoader.HOLD:
                copied.popleft().synchronize()
        if ready is not None:
            yield ready

    def describe(self) -> str:
        precision = {None: "float32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + grad scaler"}
        memory = "channels-last" if self.channels_last else "contiguous"
        return (
            f"device {self.device}, {precision[self.amp_dtype]}, {memory}, "
            f"{'compiled' if self.compile else 'eager'}, {self.workers} loader workers"
            + (", deterministic algorithms" if self.deterministic else "")
        )


def available_cpus() -> int:
    """CPUs this process may run on (the Slurm allocation, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(requested: int | None, threads: int) -> int:
    """`workers: null` -> one fewer than min(threads, CPUs available), at least 0."""
    if requested is not None:
        return requested
    return max(0, min(threads, available_cpus()) - 1)


def resolve_runtime(training: Mapping[str, object], threads: int = 1) -> Runtime:
    """The runtime for the validated `training` options, with the process-wide switches set (threads, cuDNN)."""
    device = resolve_device(str(training.get("device", "auto")), "training.device")
    workers = loader_workers(training.get("workers"), threads)  # type: ignore[arg-type]
    deterministic = bool(training.get("deterministic"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic  # autotuning picks algorithms by their speed in this run
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:  # cuBLAS reduces in a fixed order only with a fixed workspace (read when it starts)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        amp_dtype = autocast_dtype(training.get("amp", True), device)  # type: ignore[arg-type]
        channels_last, compile_model = bool(training.get("channels_last", True)), bool(training.get("compile"))
        runtime = Runtime(device, amp_dtype, channels_last, compile_model, workers, deterministic)
    else:
        torch.set_num_threads(max(1, threads))
        ignored = [key for key in ("amp", "channels_last", "compile") if training.get(key)]
        if ignored:
            log.info(
                "on the CPU the network runs in float32, contiguous, eager (%s apply on a GPU)", ", ".join(ignored)
            )
        runtime = Runtime(device, None, False, False, workers, deterministic)
    log.info("training runtime: %s", runtime.describe())
    return runtime


def ignore_stop_signals_in_worker(_worker_id: int) -> None:
    """DataLoader worker start-up: leave stop signals to the training process; one thread per worker."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    torch.set_num_threads(1)
