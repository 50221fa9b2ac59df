"""Training throughput (patches/s) of the thesis U-Net: our GPU configuration (bf16 autocast, channels-last,
optionally torch.compile, float16 batches) against the thesis's (e40b271: fp16 autocast with a grad scaler,
default memory format, eager; and float32 as before ae13857), measured in one run with the training code itself
(`snowcloud.training.loop.train_step`), with the peak CUDA memory of each.

By default the batches are synthetic and already on the device, which isolates the model step from data
loading. `--stats results/datasets/<name>/stats.json` (or `--synthetic-shards N`: N patches in real shards
made by the shard stage from synthetic scenes) also times the real loader (`batch_loader`: HDF5 reads,
augmentation, workers, pinned memory) alone and feeding our configuration, and the share of that step time
spent waiting for the next batch.

    python benchmarks/bench_train.py --device cuda --compile --synthetic-shards 1024 --workers 7   # goal >= 1100/s, >= 2x
    python benchmarks/bench_train.py --device cuda --stats results/datasets/thesis/stats.json --workers 7
    python benchmarks/bench_train.py --device cpu --batch-size 2 --steps 3   # a CPU smoke run (fp32 only)
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from synthetic import write_dataset

from snowcloud.accelerator import resolve_device
from snowcloud.augment import Augmentation
from snowcloud.config import validate_config
from snowcloud.dataset_stats import load_split
from snowcloud.loader import EpochSampler, ShardDataset
from snowcloud.losses import build_loss
from snowcloud.model import build_model, count_parameters
from snowcloud.training.loop import make_loader, make_optimizer, train_step
from snowcloud.training.runtime import Runtime, resolve_runtime

GOAL_PATCHES_PER_S = 1100  # on one H100, batch 32, 256 x 256, 14 channels
GOAL_RATIO = 2.0  # against the thesis's e40b271 configuration
THESIS = "thesis e40b271"


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
    parser.add_argument(
        "--synthetic-shards",
        type=int,
        metavar="N",
        help="also time the real loader over N patches in real shards made from synthetic scenes",
    )
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the training rule's)")
    return parser.parse_args()


def training_options(args: argparse.Namespace, amp: bool | str, channels_last: bool, compile_: bool) -> dict:
    """Validated training options (the schema's defaults, i.e. the thesis's optimiser, clip and augmentation)."""
    training = {
        "amp": amp,
        "channels_last": channels_last,
        "compile": compile_,
        "device": args.device,
        "batch_size": args.batch_size,
        "workers": args.workers,
    }
    config = {"datasets": {"d": {}}, "experiments": {"e": {"dataset": "d", "training": training}}}
    return validate_config(config)["experiments"]["e"]["training"]


def synthetic_batches(args: argparse.Namespace, runtime: Runtime) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same batch again and again, already on the device as the network takes it: the step alone is timed."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch_size, args.channels, args.patch_size, args.patch_size, generator=generator)
    label = torch.randint(0, 4, (args.batch_size, args.patch_size, args.patch_size), generator=generator)
    label[:, :8, :8] = 255
    return itertools.repeat(runtime.to_device(image, label))


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


class Waiting:
    """Batches of an iterator, with the wall time spent waiting for them."""

    def __init__(self, batches: Iterator) -> None:
        self.batches, self.seconds = batches, 0.0
        self.share = 0.0  # of the timed steps (set by time_configurations)

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.batches)
        self.seconds += time.perf_counter() - start
        return batch


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


def peak_memory(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, in GiB (0 on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def main() -> None:
    args = arguments()
    threads = args.threads or torch.get_num_threads()
    gpu = resolve_device(args.device, "--device").type == "cuda"
    args.batch_size = args.batch_size or (32 if gpu else 2)
    args.steps = args.steps or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    args.rounds = args.rounds or (5 if gpu else 1)
    # The thesis: fp16 autocast + grad scaler (e40b271) or float32 (before ae13857), default memory format,
    # eager; ours: the training defaults (bf16 where supported, channels-last), eager and compiled.
    settings = {
        THESIS: training_options(args, amp="fp16", channels_last=False, compile_=False),
        "thesis before ae13857": training_options(args, amp=False, channels_last=False, compile_=False),
        "ours, eager": training_options(args, amp=True, channels_last=True, compile_=False),
    }
    if args.compile:
        settings["ours, compiled"] = training_options(args, amp=True, channels_last=True, compile_=True)
    ours_label = "ours, compiled" if args.compile else "ours, eager"
    runtimes = {label: resolve_runtime(training, threads) for label, training in settings.items()}
    ours, ours_training = runtimes[ours_label], settings[ours_label]

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
            "NOTE: CPU run. Batch and step counts are reduced, and AMP / channels-last apply on a GPU only, so all "
            "configurations run in float32 here and their ratio is ~1 by construction."
        )
    if args.batch_size != 32:
        print(f"NOTE: batch {args.batch_size} instead of the thesis's 32.")

    configurations: dict[str, tuple[Runtime, Callable[[], object]]] = {
        label: (runtime, model_stepper(args, runtime, settings[label], synthetic_batches(args, runtime)))
        for label, runtime in runtimes.items()
    }
    waiting = None
    with tempfile.TemporaryDirectory() as scratch:
        if args.synthetic_shards:
            start = time.perf_counter()
            per_date = -(-args.synthetic_shards // 4)
            args.stats = write_dataset(Path(scratch), 5, per_date, args.patch_size)  # 4 training dates, 1 validation
            print(
                f"real shards: 5 dates x {per_date} patches made by the shard stage in {time.perf_counter() - start:.0f} s"
            )
        if args.stats:
            alone = loader_batches(args, ours, ours_training)
            configurations["real loader alone"] = (ours, lambda: next(alone))
            waiting = Waiting(ours.on_device(loader_batches(args, ours, ours_training)))
            configurations[f"{ours_label}, real loader"] = (ours, model_stepper(args, ours, ours_training, waiting))
        rates, seconds, memory = time_configurations(args, configurations, waiting)

    print(f"\n{'configuration':28s} {'runtime':68s} {'ms/step':>8s} {'patches/s':>10s} {'peak GiB':>9s}")
    for label, (runtime, _) in configurations.items():
        print(
            f"{label:28s} {runtime.describe():68s} {seconds[label] * 1000:8.1f} {rates[label]:10.1f} "
            f"{memory[label]:9.2f}"
        )
    if waiting is not None:
        fed = f"{ours_label}, real loader"
        print(
            f"\nwaiting for the next batch: {100 * waiting.share:.1f} % of the step time fed by the real loader "
            f"({args.workers if args.workers is not None else ours.workers} workers); "
            f"{rates[fed] / rates[ours_label]:.2f}x the synthetic-batch rate"
        )
    ratio = rates[ours_label] / rates[THESIS]
    print(
        f"\n{ours_label} / {THESIS} (model step, same run): {ratio:.2f}x; "
        f"/ fp32: {rates[ours_label] / rates['thesis before ae13857']:.2f}x"
    )
    goal = f">= {GOAL_PATCHES_PER_S} patches/s and >= {GOAL_RATIO:.0f}x the thesis configuration"
    if gpu and args.batch_size == 32 and args.patch_size == 256 and args.channels == 14 and args.base_channels == 64:
        met = rates[ours_label] >= GOAL_PATCHES_PER_S and ratio >= GOAL_RATIO
        print(f"goal ({goal}, for an H100): {'met' if met else 'NOT met'} on this {name}")
    else:
        print(f"goal ({goal} on one H100 at batch 32, 256x256, 14 channels): not measurable in this run")


def time_configurations(
    args: argparse.Namespace, configurations: dict[str, tuple[Runtime, Callable[[], object]]], waiting: Waiting | None
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Warm every configuration up, then time them in interleaved rounds: patches/s and s/step (medians), peak
    GiB; `waiting` gets the share of its configuration's timed steps spent waiting for batches."""
    for _, step in configurations.values():
        for _ in range(args.warmup):  # cuDNN autotuning, compilation, worker start-up
            step()
    timings: dict[str, list[float]] = {label: [] for label in configurations}
    memory = dict.fromkeys(configurations, 0.0)
    waited = timed = 0.0
    for _ in range(args.rounds):
        for label, (runtime, step) in configurations.items():
            if runtime.cuda:
                torch.cuda.reset_peak_memory_stats(runtime.device)
            before = waiting.seconds if waiting is not None else 0.0
            timings[label].append(seconds_per_step(step, runtime.device, args.steps))
            memory[label] = max(memory[label], peak_memory(runtime.device))
            if waiting is not None and waiting.seconds != before:
                waited += waiting.seconds - before
                timed += timings[label][-1] * args.steps
    if waiting is not None:
        waiting.share = waited / timed if timed else 0.0
    seconds = {label: statistics.median(values) for label, values in timings.items()}
    return {label: args.batch_size / s for label, s in seconds.items()}, seconds, memory


if __name__ == "__main__":
    sys.exit(main())
