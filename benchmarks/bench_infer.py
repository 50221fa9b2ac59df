"""Full-scene inference figures: the window schemes side by side, and s2cloudless per scene.

    python benchmarks/bench_infer.py [--rows 10980] [--width 10980] [--model results/models/demo/model.pt]
                                     [--base-channels 8] [--patch-size 256] [--tta] [--threads 2] [--device cpu]
                                     [--free-model [copy|conv1x1]] [--against REV] [--repeat 1] [--schemes margin]
    python benchmarks/bench_infer.py --device cuda --base-channels 64 --tta   # the thesis model on a GPU

It writes a synthetic 14-band scene raster of --width x --rows (int16, nodata -32768, the last 5 % of the columns
without data as at a swath edge, spatially structured values) and runs `infer.predict_scene` end to end (reading,
snowcloud-v1 normalisation, windows, network, blending, COG writing) once per scheme, each in a fresh process so
that its peak RSS is its own:

- `today`: the 50 %-overlap blending of --patch-size windows with sine weights, batch 16 (the default before the
  margin scheme);
- `margin`: the new default (windows of up to 1280 px, 64 px margins discarded, batches of as many pixels as 16
  patches);
- `thesis`: the thesis's scheme, 50 % overlap (stride 128 at 256 px), tent weights, batch 1.

For each it prints seconds, windows, windows/s, network passes per pixel, peak RSS and the share of valid pixels
whose class equals today's; on a GPU also the peak CUDA memory and the mean GPU utilisation (nvidia-smi sampled
every 100 ms). `--stages` also times, for the first scheme, reading and normalising the scene alone (1 thread
and --threads threads) and the network alone (windows/s on the device), so that the end-to-end time can be
read against its parts. The model is --model (a trained checkpoint, e.g. the demo's; its patch size is set to
--patch-size for the blend schemes, the weights are untouched) or a U-Net of --base-channels with random weights.
With --free-model the network is a stand-in that costs next to nothing (`copy`, the default: the first K
input channels copied, a network's output written and nothing computed; `conv1x1`: a 1 x 1 convolution, the
stand-in of the first figures, which costs more than the rest on a CPU), so the figures are everything but the
network: reading, normalising, the flips of TTA, softmax, blending, the argmax and class counts, writing. Each
such run is a fresh Python process that prints its wall time, its CPU time (all threads; what the load of a
shared machine barely moves) and the stand-in's own CPU time, so that "everything but the network" is the CPU
time less that. `--against REV` runs the same in a temporary worktree of a git revision (its package first on
PYTHONPATH, the same stand-in and scene), alternating with this tree `--repeat` times, and prints the ratios: the
before and after of a change from one run. It also prints the model's receptive field (radius around an output pixel holding 99 / 99.9 / 99.99 % of the
input gradient, and where it ends) and, with --s2cloudless, s2cloudless over the same scene with the
`evaluation.s2cloudless` defaults: seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
import torch
from synthetic import write_scene

from snowcloud import checkpoint, cloudprob, infer, normalisation
from snowcloud.bands import BANDS, ELEVATION
from snowcloud.config import validated
from snowcloud.labels import CLASSES, IGNORE_INDEX
from snowcloud.model import build_model, count_parameters
from snowcloud.scene import band_indexes, row_strips
from snowcloud.windows import axis_plans

REPO = Path(__file__).resolve().parents[1]
FULL_TILE = 10980
SCHEMES = {
    "today": {"scheme": "blend", "overlap": 0.5, "blending": "sine", "batch_size": 16},
    "margin": {"scheme": "margin", "window": 1280, "margin": 64, "batch_size": 16},
    "thesis": {"scheme": "blend", "overlap": 0.5, "blending": "tent", "batch_size": 1},
}


def save_model(path: Path, source: Path | None, base_channels: int, patch_size: int) -> torch.nn.Module:
    """The benchmark's checkpoint: `source`'s weights and metadata with the patch size set, or a U-Net with
    random weights."""
    if source is not None:
        network, metadata = checkpoint.load_model(source)
        metadata = {**metadata, "patch_size": patch_size}
    else:
        bands = [*BANDS, ELEVATION]
        args = {"in_channels": len(bands), "n_classes": len(CLASSES), "base_channels": base_channels}
        torch.manual_seed(0)
        network = build_model("unet", **args)
        metadata = {
            "architecture": "unet",
            "model_args": args,
            "bands": bands,
            "classes": list(CLASSES),
            "normalisation": normalisation.spec("snowcloud-v1"),
            "patch_size": patch_size,
            "experiment": "bench",
        }
    checkpoint.save_model(path, network, metadata)
    return network.eval()


def receptive_field(network: torch.nn.Module, size: int = 384) -> str:
    """Radii (Chebyshev, px) around an output pixel holding 99 / 99.9 / 99.99 % of the input gradient of its
    logits, and the radius beyond which the gradient is exactly 0."""
    x = torch.randn(1, network.inc[0].in_channels, size, size, requires_grad=True)
    centre = size // 2
    network(x)[0, :, centre, centre].sum().backward()
    gradient = x.grad.abs().sum(dim=(0, 1)).numpy()
    offsets = np.abs(np.arange(size) - centre)
    distance = np.maximum(offsets[:, None], offsets[None, :])
    total = gradient.sum()
    radii = [next(r for r in range(size) if gradient[distance <= r].sum() >= q * total) for q in (0.99, 0.999, 0.9999)]
    return f"{radii[0]} / {radii[1]} / {radii[2]} px; nonzero up to {distance[gradient > 0].max()} px"


def peak_rss() -> int:
    """This process's peak resident set size in bytes: VmHWM, which (unlike ru_maxrss, kept across exec) does
    not include the parent's memory at the fork that started this process."""
    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: ru_maxrss (bytes on macOS), which may include the parent's
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmHWM:"))


def run_prediction(model: str, scene: str, output: str, options: dict, threads: int, results) -> None:
    """Child process: one predict_scene, then its wall time and peak RSS (and peak CUDA memory)."""
    start = time.perf_counter()
    infer.predict_scene(model, scene, output, options, threads=threads)
    seconds = time.perf_counter() - start
    cuda_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    results.put((seconds, peak_rss(), cuda_peak))


class FreeNetwork(torch.nn.Module):
    """A stand-in for the network that costs next to nothing: the first `classes` input channels, copied (as a
    network writes its output), or a 1 x 1 convolution (`conv1x1`). It sums the CPU time of its own calls."""

    def __init__(self, kind: str, channels: int, classes: int):
        super().__init__()
        self.classes, self.cpu = classes, 0.0
        self.conv = torch.nn.Conv2d(channels, classes, 1) if kind == "conv1x1" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.thread_time()
        if self.conv is not None:
            out = self.conv(x)
        elif x.device.type == "cpu":  # numpy copies on this thread alone, so thread_time is all of its CPU time
            out = torch.from_numpy(x.numpy()[:, : self.classes].copy())
        else:
            out = x[:, : self.classes].clone()
        self.cpu += time.thread_time() - start
        return out


def free_prediction(kind: str, model: str, scene: str, output: str, options: dict, threads: int) -> dict:
    """predict_with the checkpoint's bands, normalisation and settings but a FreeNetwork: wall and CPU seconds
    (all threads), the stand-in's CPU seconds and the peak RSS, of whichever snowcloud package is imported."""
    loaded = infer.load_for_inference(model, options, threads)
    free = FreeNetwork(kind, len(loaded.metadata["bands"]), len(loaded.class_names)).to(loaded.settings.device)
    start, cpu = time.perf_counter(), cpu_seconds()
    infer.predict_with(infer.LoadedModel(loaded.path, free.eval(), loaded.metadata, loaded.settings), scene, output,
                       options)  # fmt: skip
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {"seconds": seconds, "cpu": cpu, "network_cpu": free.cpu, "peak": peak_rss()}


def run_free_in_checkout(checkout: Path, kind: str, model: str, scene: str, output: str, options: dict,
                         threads: int) -> dict:  # fmt: skip
    """free_prediction in a fresh process with the package of `checkout` (its src first on PYTHONPATH)."""
    job = json.dumps([kind, model, scene, output, options, threads])
    environment = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    done = subprocess.run([sys.executable, __file__, "--free-child", job], capture_output=True, text=True,
                          env=environment)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the free-model prediction with {checkout / 'src'} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def cpu_seconds() -> float:
    """CPU time of this process so far, all its threads: what a shared machine's other users do not change."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_s2cloudless(scene: str, threads: int, results) -> None:
    """Child process: s2cloudless over the scene with the evaluation defaults, then its wall time and peak RSS."""
    settings = validated({}, "evaluation")["s2cloudless"]
    start = time.perf_counter()
    cloudy = sum(int(strip.mask.sum()) for strip in cloudprob.cloud_strips(scene, **settings, threads=threads))
    results.put((time.perf_counter() - start, peak_rss(), cloudy, settings))


def run_stages(model: str, scene: str, options: dict, threads: int, results) -> None:
    """Child process: reading + normalising the scene's windows alone (1 thread over the first two window rows,
    scaled to the scene; then `threads` threads over all), and the network alone (one batch again and again)."""
    loaded = infer.load_for_inference(model, options, threads)
    spec = loaded.metadata["normalisation"]
    normalise = infer.checkpoint_normaliser(spec, scene)
    with rasterio.open(scene) as dataset:
        indexes = band_indexes(dataset, list(loaded.metadata["bands"]), model)
        plans = axis_plans(dataset.height, dataset.width, loaded.patch_size, options)
        windows = infer.plan_windows(plans, dataset.height, dataset.width)
    rows, cols = plans
    read = {}
    for readers, chosen in ((1, windows[: 2 * len(cols.starts)]), (threads, windows)):
        start = time.perf_counter()
        for _ in infer.read_ahead(scene, indexes, normalise, chosen, readers):
            pass
        read[readers] = (time.perf_counter() - start) * len(windows) / len(chosen)
    per_batch = infer.windows_per_batch(loaded.settings, loaded.patch_size, plans)
    batch = torch.randn(per_batch, len(indexes), rows.size, cols.size)
    if loaded.settings.device.type == "cuda":
        batch = batch.pin_memory()
    for _ in range(3):
        infer.window_probabilities(loaded.network, batch, loaded.settings).cpu()
    repeats = max(3, min(50, len(windows) // per_batch))
    start = time.perf_counter()
    for _ in range(repeats):
        infer.window_probabilities(loaded.network, batch, loaded.settings).cpu()
    network = (time.perf_counter() - start) / (repeats * per_batch) * len(windows)
    results.put((read, network, len(windows)))


@contextmanager
def gpu_utilisation():
    """Sample the GPU's utilisation (%) every 100 ms while the block runs; yields a list that holds the samples
    afterwards (empty without nvidia-smi)."""
    samples: list[float] = []
    smi = shutil.which("nvidia-smi")
    if smi is None:
        yield samples
        return
    command = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
    sampler = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        yield samples
    finally:
        sampler.terminate()
        output, _ = sampler.communicate()
        samples.extend(float(line) for line in output.split() if line.strip().replace(".", "").isdigit())


def in_child(context, target, *args):
    results = context.Queue()
    child = context.Process(target=target, args=(*args, results))
    child.start()
    result = results.get()
    child.join()
    return result


def mean(samples: list[float]) -> float:
    return sum(samples) / len(samples) if samples else float("nan")


def agreement(a: Path, b: Path) -> float:
    """Share of the valid pixels of two class masks with the same class (read in strips)."""
    same = valid = 0
    with rasterio.open(a) as first, rasterio.open(b) as second:
        for window in row_strips(first.height, first.width, 1024):
            x, y = first.read(1, window=window), second.read(1, window=window)
            mask = x != IGNORE_INDEX
            same += int((x[mask] == y[mask]).sum())
            valid += int(mask.sum())
    return same / valid


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def same_pixels(a: Path, b: Path) -> bool:
    """Whether two rasters hold the same pixels in every band and overview level (and the same profile, tags)."""
    with rasterio.open(a) as first, rasterio.open(b) as second:
        if (first.profile, first.tags(), first.overviews(1)) != (second.profile, second.tags(), second.overviews(1)):
            return False
        for factor in [1, *first.overviews(1)]:
            shape = (first.count, -(-first.height // factor), -(-first.width // factor))
            if not np.array_equal(first.read(out_shape=shape), second.read(out_shape=shape)):
                return False
        return True


@contextmanager
def checkout_of(revision: str | None, root: Path):
    """A temporary detached worktree of `revision` under `root` (None: nothing), removed afterwards."""
    if revision is None:
        yield None
        return
    folder = root / "against"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), revision], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False)


def free_model_runs(args: argparse.Namespace, name: str, root: Path, scene: Path) -> None:
    """The --free-model figures of one scheme: this tree's package (and --against REV's, alternating), each run a
    fresh process; wall, CPU, the stand-in's CPU, the rest, peak RSS; the fastest of --repeat and the ratios."""
    options = validated({**SCHEMES[name], "tta": args.tta, "device": args.device}, "inference")
    rows, cols = axis_plans(args.rows, args.width, args.patch_size, options)
    print(f"{name} scheme: {len(rows.starts) * len(cols.starts)} windows of {rows.size} x {cols.size}")
    with checkout_of(args.against, root) as other:
        trees = {"this tree": REPO} | ({args.against: other} if other else {})
        best: dict[str, dict] = {}
        for attempt in range(args.repeat if other else 1):
            for label, checkout in trees.items():
                output = root / f"{name}-{list(trees).index(label)}.tif"
                run = run_free_in_checkout(checkout, args.free_model, str(root / "model.pt"), str(scene),
                                           str(output), options, args.threads)  # fmt: skip
                run["rest"] = run["cpu"] - run["network_cpu"]
                print(
                    f"  {label:>12} run {attempt + 1}: wall {run['seconds']:6.1f} s, CPU {run['cpu']:6.1f} s "
                    f"(stand-in network {run['network_cpu']:5.1f} s, everything else {run['rest']:6.1f} s), "
                    f"peak RSS {run['peak'] / 2**20:5.0f} MB; load {load()}",
                    flush=True,
                )
                if label not in best or run["rest"] < best[label]["rest"]:
                    best[label] = run
        if other:
            now, then = best["this tree"], best[args.against]
            same = same_pixels(root / f"{name}-0.tif", root / f"{name}-1.tif")
            print(
                f"  this tree / {args.against}: x{now['rest'] / then['rest']:.2f} CPU of everything but the "
                f"network, x{now['cpu'] / then['cpu']:.2f} CPU in all, x{now['seconds'] / then['seconds']:.2f} "
                f"wall; masks {'identical' if same else 'DIFFERENT'} (pixels and overviews)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=FULL_TILE, help="scene height (a full tile: 10980)")
    parser.add_argument("--width", type=int, default=FULL_TILE)
    parser.add_argument("--model", type=Path, default=None, help="a trained model.pt (default: random weights)")
    parser.add_argument("--base-channels", type=int, default=8, help="U-Net width without --model (thesis: 64)")
    parser.add_argument("--patch-size", type=int, default=256, help="window of the blend schemes (thesis: 256)")
    parser.add_argument("--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES))
    parser.add_argument("--tta", action="store_true", help="4-way flip TTA (4 forward passes per window)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--s2cloudless", action="store_true", help="also time s2cloudless over the scene")
    parser.add_argument("--stages", action="store_true", help="also time reading alone and the network alone")
    parser.add_argument("--free-model", nargs="?", const="copy", choices=["copy", "conv1x1"],
                        help="a stand-in for the network that costs next to nothing: the time of everything else")  # fmt: skip
    parser.add_argument("--against", metavar="REV", help="with --free-model: also run a git revision's package")
    parser.add_argument("--repeat", type=int, default=1, help="with --against: runs of each, alternating")
    parser.add_argument("--free-child", help=argparse.SUPPRESS)  # one free_prediction, JSON in and out
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if args.free_child:
        print(json.dumps(free_prediction(*json.loads(args.free_child))))
        return
    if args.against and not args.free_model:
        parser.error("--against needs --free-model")
    print(f"load (1, 5, 15 min): {load()} on {os.cpu_count()} CPUs")
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        root = Path(scratch)
        network = save_model(root / "model.pt", args.model, args.base_channels, args.patch_size)
        scene = root / "32TNS" / "20220201T102209.tif"
        scene.parent.mkdir()
        write_scene(scene, args.rows, args.width)
        if args.free_model:
            print(f"network: the stand-in {args.free_model} (--free-model): the figures are everything but the network")
        print(
            f"scene {args.width} x {args.rows}; model {args.model or 'random weights'}: U-Net "
            f"({count_parameters(network):,} parameters); TTA {args.tta}; {args.device}, {args.threads} threads"
        )
        print(f"receptive field (99 / 99.9 / 99.99 % of the gradient): {receptive_field(network)}")
        gpu = args.device == "cuda"
        if args.stages:
            options = validated({**SCHEMES[args.schemes[0]], "tta": args.tta, "device": args.device}, "inference")
            read, network, windows = in_child(
                context, run_stages, str(root / "model.pt"), str(scene), options, args.threads
            )
            print(
                f"{args.schemes[0]} scheme, parts alone ({windows} windows): reading + normalising "
                f"{read[1]:.1f} s on 1 thread, {read[args.threads]:.1f} s on {args.threads}; network "
                f"{network:.1f} s ({windows / network:.1f} windows/s, TTA {args.tta}, {args.device})"
            )
        if args.free_model:
            for name in args.schemes:
                free_model_runs(args, name, root, scene)
            print(f"load (1, 5, 15 min): {load()}")
            return
        print(
            f"{'scheme':>7} {'windows':>8} {'window px':>10} {'passes/px':>9} {'seconds':>8} {'windows/s':>10} "
            f"{'peak RSS MB':>12} {'agreement':>10}{' CUDA peak MB  GPU util %' if gpu else ''}"
        )
        seconds = {}
        for name in args.schemes:
            options = validated({**SCHEMES[name], "tta": args.tta, "device": args.device}, "inference")
            rows, cols = axis_plans(args.rows, args.width, args.patch_size, options)
            windows = len(rows.starts) * len(cols.starts)
            output = root / f"{name}.tif"
            with gpu_utilisation() as utilisation:
                seconds[name], peak, cuda_peak = in_child(
                    context, run_prediction, str(root / "model.pt"), str(scene), str(output), options, args.threads
                )
            same = agreement(root / f"{args.schemes[0]}.tif", output)
            print(
                f"{name:>7} {windows:>8} {f'{rows.size}x{cols.size}':>10} "
                f"{rows.work(args.rows) * cols.work(args.width):>9.2f} {seconds[name]:>8.1f} "
                f"{windows / seconds[name]:>10.2f} {peak / 2**20:>12.0f} {100 * same:>9.2f}%"
                f"{f' {cuda_peak / 2**20:>12.0f} {mean(utilisation):>10.0f}' if gpu else ''}"
            )
        if "margin" in seconds:
            for name in seconds.keys() - {"margin"}:
                print(f"margin scheme {seconds[name] / seconds['margin']:.2f}x faster than {name}")
        if args.s2cloudless:
            took, peak, cloudy, settings = in_child(context, run_s2cloudless, str(scene), args.threads)
            print(f"s2cloudless {settings}: {took:.1f} s, peak RSS {peak / 2**20:.0f} MB ({cloudy:,} cloud pixels)")
    print(f"(agreement: share of valid pixels with the class of the first scheme, {args.schemes[0]})")


if __name__ == "__main__":
    main()
