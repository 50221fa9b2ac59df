"""Data-parallel training over the ranks of a `torchrun` launch: who this process is, the process group, the
whole batch from every rank's part, BatchNorm over the whole batch, and decisions all ranks share.

Every rank reads its own part of each batch (`loader.RankBatches`) and runs the network on it. The logits
(and labels) of all parts are then gathered, so that every rank computes the loss, the metrics and the
patch counts of the whole batch exactly as one process would; the backward pass hands each rank the
gradient of its own part, times the number of ranks, and DistributedDataParallel's averaging of the
parameter gradients gives the gradient of the whole batch. BatchNorm uses the statistics of the whole batch
(torch.nn.SyncBatchNorm on a GPU, `GlobalBatchNorm2d` elsewhere). A data-parallel run therefore follows the
trajectory of one process with the same `training.batch_size`, up to the order of floating-point sums.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from snowcloud.labels import IGNORE_INDEX

# What torchrun sets for each process it starts.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a training (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    group: Any = None  # the process group for decisions taken on the host (gloo), once joined

    @classmethod
    def from_environment(cls) -> World | None:
        """The world torchrun started this process in, or None when it did not start it."""
        if "WORLD_SIZE" not in os.environ:
            return None
        rank, size, local_rank = (int(os.environ.get(name, 0)) for name in LAUNCH_VARIABLES)
        return cls(rank, size, local_rank)

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the state, the history and the model."""
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set on any rank. A collective: every rank must call it at the same point."""
        if not self.parallel:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, group=self.group)
        return bool(value.item())

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier(group=self.group)

    def whole_batch(
        self, logits: torch.Tensor, label: torch.Tensor, sizes: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and labels of the whole batch, in batch order, from each rank's part (`sizes` patches on
        each rank). Gradients flow back to this rank's part only, times the number of ranks."""
        if not self.parallel:
            return logits, label
        whole_logits = _GatherParts.apply(logits, tuple(sizes), self.rank)
        whole_label = _gather_parts(label.to(torch.uint8), sizes).to(torch.int64)
        return whole_logits, whole_label


def _gather_parts(part: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Every rank's part (padded to the largest for the collective), concatenated in rank order."""
    rows = max(sizes)
    if len(part) < rows:
        fill = 0 if part.is_floating_point() else IGNORE_INDEX
        padding = part.new_full((rows - len(part), *part.shape[1:]), fill)
        part = torch.cat([part, padding])
    part = part.contiguous()
    gathered = [torch.empty_like(part) for _ in sizes]
    dist.all_gather(gathered, part)
    return torch.cat([rows_of_rank[:size] for rows_of_rank, size in zip(gathered, sizes, strict=True)])


class _GatherParts(torch.autograd.Function):
    """Forward: the whole batch from every rank's part. Backward: this rank's rows of the gradient, times the
    number of ranks (every rank computes the same loss of the whole batch; DDP averages over ranks)."""

    @staticmethod
    def forward(ctx: Any, part: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return _gather_parts(part, sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]] * len(ctx.sizes), None, None


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over all ranks, with the sum of the gradients as its backward."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises a training batch with the mean and variance of the whole batch over all
    ranks, and keeps those in its running statistics (what torch.nn.SyncBatchNorm does, which runs on GPUs
    only): two all-reduces of C numbers per layer and pass. Outside a data-parallel training it is BatchNorm2d."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Module's name)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        values = input.float()
        count = input.new_tensor([input.numel() / input.shape[1]], dtype=torch.float32)
        sums = _SumOverRanks.apply(torch.cat([values.sum(dims), count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = values - mean.view(shape)
        variance = _SumOverRanks.apply(centred.square().sum(dims)) / count
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._track(mean.detach(), variance.detach() * count / (count - 1).clamp_min(1))
        return output.to(input.dtype)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_variance.to(self.running_var.dtype), factor)


def global_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """The module with every BatchNorm2d normalising over the whole batch of all ranks (same parameter and
    buffer names, so states and model files do not depend on the number of ranks)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        converted = GlobalBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        converted.load_state_dict(module.state_dict())
        return converted
    for name, child in module.named_children():
        setattr(module, name, global_batchnorm(child, device))
    return module


def requested_processes(training: dict[str, Any], device: torch.device) -> int:
    """`training.gpus`, or when null every GPU this process sees (those Slurm gave the job) and 1 on a CPU."""
    gpus = training.get("gpus")
    visible = torch.cuda.device_count() if device.type == "cuda" else None
    if gpus is None:
        return visible or 1
    if visible is not None and gpus > visible:
        raise ValueError(
            f"training.gpus is {gpus} but this job sees {visible} GPU(s); ask for more GPUs (the Slurm profile's "
            "GPUS) or lower training.gpus (null uses every GPU the job has)"
        )
    return int(gpus)


@contextmanager
def joined(world: World, device: torch.device) -> Iterator[World]:
    """Join the process group of a data-parallel training for the block (NCCL on GPUs, gloo on CPUs, plus a
    gloo group for host-side decisions); leave it after. A world of one rank joins nothing."""
    if not world.parallel:
        yield world
        return
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size)
    try:
        yield replace(world, group=dist.new_group(backend="gloo") if cuda else None)
    finally:
        dist.destroy_process_group()
