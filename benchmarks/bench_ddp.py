"""Data-parallel training throughput: patches/s of the training step on 1 and N ranks.

Each rank runs the training code's step (`training.loop.train_step` under DistributedDataParallel, with the
whole-batch gather of the logits and BatchNorm over the whole batch) on its part of the same global batch, which
is synthetic and already in memory: the loader is left out (benchmarks/bench_train.py --stats times it). The
rate is the global batch times the steps over the wall time of rank 0, between barriers; the median of
`--rounds` such timings is printed.

On a 2-core CPU expect no gain from 2 ranks: each rank gets half the cores and the all-reduces add to every step;
the CPU run shows that the data-parallel step runs, not speed. On N GPUs the goal is >= 0.9 N x the rate of one
GPU at the thesis batch (32 of 256 x 256, 14 channels, base 64).

    python benchmarks/bench_ddp.py                                    # CPU, gloo: 1 and 2 ranks, batch 8 of 64^2
    python benchmarks/bench_ddp.py --device cuda --ranks 1 4 --batch-size 32 --patch-size 256 --base-channels 64
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from snowcloud.config import validate_config
from snowcloud.loader import part_sizes
from snowcloud.losses import build_loss
from snowcloud.model import build_model
from snowcloud.training.distributed import World, global_batchnorm, joined
from snowcloud.training.loop import make_optimizer, train_step
from snowcloud.training.runtime import available_cpus, resolve_runtime


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts to time (GPUs on cuda)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch, split over the ranks")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=14)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads in all (default: all available)")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def time_rank(rank: int, ranks: int, args: argparse.Namespace, results: mp.SimpleQueue) -> None:
    """One rank: build the model and step `args.steps` times on its part of the batch; rank 0 reports the rate."""
    device = torch.device(args.device)
    training = {"device": args.device, "batch_size": args.batch_size}
    config = {"datasets": {"d": {}}, "experiments": {"e": {"dataset": "d", "training": training}}}
    training = validate_config(config)["experiments"]["e"]["training"]
    with joined(World(rank, ranks, rank), device) as world:
        runtime = resolve_runtime(training, max(1, args.threads // ranks))
        torch.manual_seed(0)
        model = build_model("unet", args.channels, 4, base_channels=args.base_channels)
        model = runtime.prepare_model(global_batchnorm(model, device) if world.parallel else model)
        network = (
            DistributedDataParallel(model, device_ids=[rank] if runtime.cuda else None) if world.parallel else model
        )
        loss_fn = build_loss(training["loss"], [1.19, 1.49, 1.66, 11.05], training["dice_weight"]).to(runtime.device)
        optimizer = make_optimizer(model, training["optimizer"])
        scaler = torch.amp.GradScaler(device.type, enabled=runtime.needs_grad_scaler)
        sizes = part_sizes(args.batch_size, ranks)
        generator = torch.Generator().manual_seed(rank)
        image = torch.randn(sizes[rank], args.channels, args.patch_size, args.patch_size, generator=generator)
        label = torch.randint(0, 4, (sizes[rank], args.patch_size, args.patch_size), generator=generator)
        image, label = runtime.to_device(image, label)

        def step() -> None:
            train_step(
                runtime, network, loss_fn, optimizer, scaler, image, label, training["gradient_clip"], world, sizes
            )

        for _ in range(args.warmup):
            step()
        rates = []
        for _ in range(args.rounds):
            world.barrier()
            synchronise(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            synchronise(device)
            world.barrier()
            rates.append(args.batch_size * args.steps / (time.perf_counter() - start))
        if world.main:
            results.put(statistics.median(rates))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = arguments()
    args.threads = args.threads or available_cpus()
    if args.device == "cuda" and max(args.ranks) > torch.cuda.device_count():
        sys.exit(f"--ranks {max(args.ranks)} but {torch.cuda.device_count()} GPU(s) visible")
    print(
        f"device {args.device}; {args.threads} CPU threads in all; U-Net base {args.base_channels}, {args.channels} "
        f"channels; global batch {args.batch_size} of {args.patch_size}x{args.patch_size}, split over the ranks; "
        f"{args.warmup} warm-up steps, then the median of {args.rounds} rounds of {args.steps} steps; load average {os.getloadavg()[0]:.1f}"
    )
    context = mp.get_context("spawn")
    rates = {}
    for ranks in args.ranks:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        results = context.SimpleQueue()
        mp.start_processes(time_rank, args=(ranks, args, results), nprocs=ranks, start_method="spawn")
        rates[ranks] = results.get()
        print(
            f"{ranks} rank(s): {rates[ranks]:8.1f} patches/s  ({rates[ranks] / rates[args.ranks[0]]:.2f}x "
            f"{args.ranks[0]} rank(s); ideal {ranks / args.ranks[0]:.0f}x)"
        )


if __name__ == "__main__":
    main()
