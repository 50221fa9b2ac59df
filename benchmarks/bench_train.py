"""Training throughput (patches/s) of the thesis U-Net: our GPU configuration (AMP, channels-last, optionally
torch.compile) against the thesis's (float32, default memory format), measured in one run with the training
code itself (`snowcloud.training.loop.train_step`).

By default the batches are synthetic and already on the device, which isolates the model step from data
loading; `--stats results/datasets/<name>/stats.json` also times the real loader over that dataset's training
shards (HDF5 reads, augmentation, workers, pinned memory), alone and feeding our configuration.

    python benchmarks/bench_train.py --device cuda                 # H100: goal >= 1100 patches/s, >= 2x thesis
    python benchmarks/bench_train.py --device cuda --compile
    python benchmarks/bench_train.py --device cuda --stats results/datasets/thesis/stats.json --workers 8
    python benchmarks/bench_train.py --device cpu --batch-size 2 --steps 3   # a CPU smoke run (fp32 only)
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

from snowcloud.augment import Augmentation
from snowcloud.config import validate_config
from snowcloud.dataset_stats import load_split
from snowcloud.loader import EpochSampler, ShardDataset
from snowcloud.losses import build_loss
from snowcloud.model import build_model, count_parameters
from snowcloud.training.loop import make_loader, make_optimizer, train_step
from snowcloud.training.runtime import Runtime, resolve_device, resolve_runtime

GOAL_PATCHES_PER_S = 1100  # on one H100, batch 32, 256 x 256, 14 channels
GOAL_RATIO = 2.0


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 on a GPU, 2 on a CPU")
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=14)
    parser.add_argument("--base-channels", type=int, default=64, help="64 is the thesis model")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round; default 20 GPU, 2 CPU")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first; default 10 GPU, 1 CPU")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds; default 5 GPU, 1 CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile our configuration")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available)")
    parser.add_argument("--stats", help="a dataset's stats.json: also time the real loader over its shards")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the training rule's)")
    return parser.parse_args()


def training_options(args: argparse.Namespace, amp: bool, channels_last: bool, compile_: bool) -> dict:
    """Validated training options (the schema's defaults, i.e. the thesis's optimiser, clip and augmentation)."""
    training = {"amp": amp, "channels_last": channels_last, "compile": compile_, "device": args.device,
                "batch_size": args.batch_size, "workers": args.workers}  # fmt: skip
    config = {"datasets": {"d": {}}, "experiments": {"e": {"dataset": "d", "training": training}}}
    return validate_config(config)["experiments"]["e"]["training"]


def synthetic_batches(args: argparse.Namespace, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same batch again and again, already on the device: the step alone is timed."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch_size, args.channels, args.patch_size, args.patch_size, generator=generator)
    label = torch.randint(0, 4, (args.batch_size, args.patch_size, args.patch_size), generator=generator)
    label[:, :8, :8] = 255
    image, label = image.to(device), label.to(device)
    return itertools.repeat((image, label))


def loader_batches(args: argparse.Namespace, runtime: Runtime, training: dict) -> Iterator:
    """Batches of the real loader over the dataset's training shards, with the configured augmentation."""
    members = load_split(args.stats)["train"]
    augmentation = Augmentation.from_options(training["augmentation"])
    dataset = ShardDataset(members, augment=augmentation if augmentation.active else None, seed=0)
    sampler = EpochSampler(len(dataset), seed=0, shuffle=True)
    loader = make_loader(dataset, sampler, args.batch_size, runtime)

    def endless() -> Iterator:
        for epoch in itertools.count(1):
            sampler.set_epoch(epoch)
            yield from loader

    return endless()


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step: Callable[[], object], device: torch.device, steps: int) -> float:
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return (time.perf_counter() - start) / steps


def model_stepper(args: argparse.Namespace, runtime: Runtime, training: dict, batches: Iterator) -> Callable[[], None]:
    """One training step of a fresh thesis U-Net under `runtime` per call, with the training code's step."""
    torch.manual_seed(0)
    model = runtime.prepare_model(build_model("unet", args.channels, 4, base_channels=args.base_channels))
    model.train()
    network = runtime.compiled(model)
    loss_fn = build_loss(training["loss"], [1.19, 1.49, 1.66, 11.05], training["dice_weight"]).to(runtime.device)
    optimizer = make_optimizer(model, training["optimizer"])
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_grad_scaler)

    def step() -> None:
        image, label = next(batches)
        train_step(runtime, network, loss_fn, optimizer, scaler, image, label, training["gradient_clip"])

    return step


def main() -> None:
    args = arguments()
    threads = args.threads or torch.get_num_threads()
    gpu = resolve_device(args.device).type == "cuda"
    args.batch_size = args.batch_size or (32 if gpu else 2)
    args.steps = args.steps or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    args.rounds = args.rounds or (5 if gpu else 1)
    # The thesis configuration: float32, default memory format, eager; ours: the training defaults.
    thesis_training = training_options(args, amp=False, channels_last=False, compile_=False)
    ours_training = training_options(args, amp=True, channels_last=True, compile_=args.compile)
    thesis = resolve_runtime(thesis_training, threads)
    ours = resolve_runtime(ours_training, threads)

    name = torch.cuda.get_device_name(ours.device) if gpu else platform.processor() or platform.machine()
    parameters = count_parameters(build_model("unet", args.channels, 4, base_channels=args.base_channels))
    print(f"device: {ours.device} ({name}); torch {torch.__version__}; {torch.get_num_threads()} CPU threads")
    print(
        f"model: U-Net base {args.base_channels}, {args.channels} channels, 4 classes, {parameters:,} parameters; "
        f"batch {args.batch_size} of {args.patch_size}x{args.patch_size}; loss {ours_training['loss']}, AdamW, "
        f"clip {ours_training['gradient_clip']}; {args.warmup} warm-up steps, then {args.rounds} round(s) of "
        f"{args.steps} timed steps per configuration, interleaved; median of the rounds"
    )
    if not gpu:
        print(
            "NOTE: CPU run. Batch and step counts are reduced, and AMP / channels-last apply on a GPU only, so both "
            "configurations run in float32 here and their ratio is ~1 by construction."
        )
    if args.batch_size != 32:
        print(f"NOTE: batch {args.batch_size} instead of the thesis's 32.")

    configurations: dict[str, tuple[Runtime, Callable[[], object]]] = {
        "thesis (fp32, contiguous)": (
            thesis,
            model_stepper(args, thesis, thesis_training, synthetic_batches(args, thesis.device)),
        ),
        "ours": (ours, model_stepper(args, ours, ours_training, synthetic_batches(args, ours.device))),
    }
    if args.stats:
        alone = loader_batches(args, ours, ours_training)
        configurations["real loader alone"] = (ours, lambda: next(alone))
        feeding = loader_batches(args, ours, ours_training)
        configurations["ours, fed by the real loader"] = (ours, model_stepper(args, ours, ours_training, feeding))

    for _, step in configurations.values():
        for _ in range(args.warmup):  # cuDNN autotuning, compilation, worker start-up
            step()
    timings: dict[str, list[float]] = {label: [] for label in configurations}
    for _ in range(args.rounds):
        for label, (runtime, step) in configurations.items():
            timings[label].append(seconds_per_step(step, runtime.device, args.steps))

    print(f"\n{'configuration':30s} {'runtime':66s} {'ms/step':>9s} {'patches/s':>10s}")
    rates = {}
    for label, (runtime, _) in configurations.items():
        seconds = statistics.median(timings[label])
        rates[label] = args.batch_size / seconds
        print(f"{label:30s} {runtime.describe():66s} {seconds * 1000:9.1f} {rates[label]:10.1f}")
    ratio = rates["ours"] / rates["thesis (fp32, contiguous)"]
    print(f"\nours / thesis (model step, same run): {ratio:.2f}x")
    goal = f">= {GOAL_PATCHES_PER_S} patches/s and >= {GOAL_RATIO:.0f}x the thesis configuration"
    if gpu and args.batch_size == 32 and args.patch_size == 256 and args.channels == 14 and args.base_channels == 64:
        met = rates["ours"] >= GOAL_PATCHES_PER_S and ratio >= GOAL_RATIO
        print(f"goal ({goal}, for an H100): {'met' if met else 'NOT met'} on this {name}")
    else:
        print(f"goal ({goal} on one H100 at batch 32, 256x256, 14 channels): not measurable in this run")


if __name__ == "__main__":
    sys.exit(main())
