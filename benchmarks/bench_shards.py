"""Shard write/read figures versus the thesis layout (one float32 HWC .npy + one PNG mask per patch).

    python benchmarks/bench_shards.py [--patches 1024] [--size 256] [--channels 14] [--workers 1 2] [--dir DIR]
                                      [--scene-size 10980 --scene-patches 1024]
    python benchmarks/bench_shards.py --main-process [--patches 128] [--workers 2] [--rounds 3]

Writes N patches of C x P x P (normalised with snowcloud-v1 from a synthetic scene, so the values have spatial
structure) as one shard (unfiltered, and lzf) and in the thesis layout, then reads them in a random order through
a DataLoader (batch 32) with 1 and 2 worker processes: warm (files in the page cache) and cold (each file's
pages dropped with posix_fadvise before the epoch). It also compares, in one process, the direct chunk read
with h5py slicing and the plain DataLoader with `batch_loader` without worker processes. With --scene-size it first builds
one shard with `build_shard` from a synthetic scene raster of that many pixels square (in a fresh process) and
prints its time and peak memory. Prints every figure and the ratios measured in this run. Needs about 6 GB of
free disk (default size; a 10980 scene adds about 3 GB) under --dir.

`--main-process` measures only what feeding a training costs the main process per batch (CPU time of all its
threads, so a pinning thread counts), with the training's batches (float16 images, uint8 labels, the default
augmentation; page-locked where a GPU is available), for the batch path before issue 23 (each worker returns
its batch in new shared memory, received by the main process and copied into pinned memory by DataLoader's
pinning thread) and today's `batch_loader` (staging slots allocated once, only a slot number received),
interleaved in rounds in one run (medians).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from snowcloud import loader, normalisation, shards
from snowcloud.augment import Augmentation
from snowcloud.bands import BANDS, ELEVATION
from snowcloud.config import validate_config
from snowcloud.loader import EpochSampler, RankBatches, ShardDataset, batch_loader

BATCH = 32


def patch_batches(n: int, channels: int, size: int, seed: int = 0, batch: int = 64) -> Iterator[tuple]:
    """(float16 images (b, C, P, P), uint8 labels (b, P, P)) cut at random from a normalised synthetic scene."""
    rng = np.random.default_rng(seed)
    side = 4 * size
    yy, xx = np.mgrid[0:side, 0:side] / size
    bright = np.sin(3 * yy) + np.cos(2 * xx) + 0.3 * rng.normal(size=(side, side)) > 0.6
    dn = np.where(bright, 8000.0, 900.0)[None] * (1 + 0.3 * np.sin(np.arange(13) / 2))[:, None, None]
    dn = dn + rng.normal(0, 250, (13, side, side))
    values = np.concatenate([dn, (800 + 900 * yy + 300 * xx)[None]])[:channels].astype(np.float32)
    scene = normalisation.apply(
        normalisation.spec("snowcloud-v1"),
        np.concatenate([values, np.zeros((14 - channels, side, side), np.float32)]),
        np.ones((side, side), bool),
        {},
    )[:channels].astype(np.float16)
    classes = (bright.astype(np.uint8) + (yy > 3.5)).astype(np.uint8)  # 0, 1 and a 'cloud' band
    for start in range(0, n, batch):
        corners = rng.integers(0, side - size, size=(min(batch, n - start), 2))
        yield (
            np.stack([scene[:, r : r + size, c : c + size] for r, c in corners]),
            np.stack([classes[r : r + size, c : c + size] for r, c in corners]),
        )


def sync(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def drop_from_page_cache(paths: list[Path]) -> None:
    """Evict these files' pages (only these: other users' cache is left alone)."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def write_shard(path: Path, n: int, channels: int, size: int, compression: str | None) -> float:
    start = time.perf_counter()
    with h5py.File(path, "w") as shard:
        image, label = shards.create_patch_datasets(shard, n, channels, size, compression or "none")
        shard.attrs["format"] = shards.FORMAT
        offset = 0
        for images, labels in patch_batches(n, channels, size):
            image[offset : offset + len(images)] = images
            label[offset : offset + len(images)] = labels
            offset += len(images)
    sync([path])
    return time.perf_counter() - start


def write_thesis_layout(root: Path, n: int, channels: int, size: int) -> float:
    """float32 HWC .npy per patch and an 8-bit PNG per mask with value class * 255 / 5 (thesis section 5)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    start = time.perf_counter()
    index = 0
    for images, labels in patch_batches(n, channels, size):
        for image, label in zip(images, labels):
            np.save(root / "images" / f"20210720T101559_{index}.npy", image.astype(np.float32).transpose(1, 2, 0))
            Image.fromarray((label * 51).astype(np.uint8)).save(root / "masks" / f"20210720T101559_{index}.png")
            index += 1
    sync(thesis_files(root))
    return time.perf_counter() - start


def thesis_files(root: Path) -> list[Path]:
    return sorted((root / "images").iterdir()) + sorted((root / "masks").iterdir())


class ThesisLayoutDataset(Dataset):
    """What the thesis loader did per item: np.load the HWC float32 image, decode the PNG mask (v * 5 // 255)."""

    def __init__(self, root: Path, n: int) -> None:
        self.images = [root / "images" / f"20210720T101559_{i}.npy" for i in range(n)]
        self.masks = [root / "masks" / f"20210720T101559_{i}.png" for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        image = torch.from_numpy(np.load(self.images[index]).transpose(2, 0, 1).copy())
        label = torch.from_numpy(np.asarray(Image.open(self.masks[index])).astype(np.int64) * 5 // 255)
        return image, label


def read_rate(
    dataset: Dataset, workers: int, files: list[Path] | None = None, batched: torch.dtype | None = None
) -> float:
    """Patches per second over one epoch in a random order (DataLoader, or `batch_loader` giving images of the
    dtype `batched`); with `files`, their pages are dropped from the page cache first."""
    sampler = EpochSampler(len(dataset), seed=1)
    if batched:
        batches = batch_loader(dataset, sampler, BATCH, image_dtype=batched, num_workers=workers)
    else:
        batches = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers)
    if files:
        drop_from_page_cache(files)
    start = time.perf_counter()
    count = sum(len(images) for images, _ in batches)
    return count / (time.perf_counter() - start)


def direct_versus_slicing(path: Path, n: int) -> tuple[float, float]:
    """Patches per second reading every image, in a random order, into one buffer: direct chunk read, then
    h5py's read_direct (HDF5 selection machinery)."""
    order = [int(i) for i in loader.epoch_order(n, 0, 0)]
    rates = []
    with h5py.File(path, "r") as shard:
        image = shard["image"]
        buffer = np.empty(image.shape[1:], image.dtype)
        for read in (
            lambda i: loader.read_patch(image, i, buffer, direct=True),
            lambda i: image.read_direct(buffer, np.s_[i]),
        ):
            start = time.perf_counter()
            for index in order:
                read(index)
            rates.append(n / (time.perf_counter() - start))
    return rates[0], rates[1]


class PreviousBatches(Dataset):
    """The batch path before issue 23, to measure against: each worker reads a batch into new shared memory
    that the main process receives (and that DataLoader's pinning thread copies into pinned memory)."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        size = (self.dataset.patch_size, self.dataset.patch_size)
        shapes = ((len(keys), self.dataset.channels, *size), torch.float16), ((len(keys), *size), torch.uint8)
        out = tuple(
            torch.empty(0, dtype=dtype)
            .set_(torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize))
            .view(shape)
            for shape, dtype in shapes
        )
        return self.dataset.read_batch(keys, out=out)


def main_process_seconds() -> float:
    """CPU time of this process so far, all its threads (not its worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main_process_per_batch(path: Path, workers: int, rounds: int, epochs: int = 3) -> None:
    """Main-process CPU ms and wall ms per training batch, the previous batch path against `batch_loader`."""
    training = validate_config({"datasets": {"d": {}}, "experiments": {"e": {"dataset": "d"}}})["experiments"]["e"]
    augmentation = Augmentation.from_options(training["training"]["augmentation"])
    dataset = ShardDataset([(path, None)], augment=augmentation, seed=0)
    pin = torch.cuda.is_available()
    paths = {
        "before issue 23": (
            sampler := EpochSampler(len(dataset), seed=0),
            DataLoader(
                PreviousBatches(dataset),
                batch_size=None,
                sampler=RankBatches(sampler, BATCH),
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=True,
            ),
        ),
        "batch_loader": (
            sampler := EpochSampler(len(dataset), seed=0),
            batch_loader(
                dataset,
                sampler,
                BATCH,
                image_dtype=torch.float16,
                label_dtype=torch.uint8,
                num_workers=workers,
                pin_memory=pin,
            ),
        ),
    }
    per_batch: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for round_ in range(rounds + 1):  # the first round starts the workers and fills the page cache: not counted
        for name, (sampler, batches) in paths.items():
            cpu, wall, count = main_process_seconds(), time.perf_counter(), 0
            for epoch in range(epochs):
                sampler.set_epoch(round_ * epochs + epoch)
                count += sum(1 for _ in batches)
            if round_:
                per_batch[name].append(((main_process_seconds() - cpu) / count, (time.perf_counter() - wall) / count))
    print(
        f"\nmain process per batch of {BATCH} x {dataset.channels} x {dataset.patch_size}^2 (float16 images, "
        f"uint8 labels, augmented; {'pinned' if pin else 'no pinning: no GPU here'}), {workers} workers, "
        f"median of {rounds} rounds of {epochs} epochs of {len(dataset) // BATCH} batches; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    cpu = {name: statistics.median(c for c, _ in values) for name, values in per_batch.items()}
    for name, values in per_batch.items():
        wall = statistics.median(w for _, w in values)
        print(f"  {name:16s} main-process CPU {cpu[name] * 1000:7.2f} ms/batch   wall {wall * 1000:7.1f} ms/batch")
    ratio = cpu["batch_loader"] / cpu["before issue 23"]
    print(f"  batch_loader / before: {ratio:.3f} of the main process's CPU time per batch (goal: at most 1/3)")


def write_large_scene(root: Path, side: int, rows: int = 512) -> tuple[Path, Path]:
    """A side x side scene raster (14 bands, tiled zstd GeoTIFF) and its label, written block by block."""
    scene = root / "results" / "scenes" / "32TNS" / "20210720T101559.tif"
    label = root / "labels" / "20210720T101559.tif"
    scene.parent.mkdir(parents=True)
    label.parent.mkdir(parents=True)
    common = {
        "driver": "GTiff",
        "height": side,
        "width": side,
        "crs": "EPSG:32632",
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "zstd",
        "transform": Affine(10, 0, 499980, 0, -10, 5200020),
    }
    rng = np.random.default_rng(0)
    with (
        rasterio.open(scene, "w", dtype="int16", count=14, nodata=normalisation.NODATA, **common) as dst,
        rasterio.open(label, "w", dtype="uint8", count=1, **common) as labels,
    ):
        dst.descriptions = [*BANDS, ELEVATION]
        xx = np.arange(side)[None, :] / 700
        for top in range(0, side, rows):
            height = min(rows, side - top)
            yy = np.arange(top, top + height)[:, None] / 700
            bright = np.sin(3 * yy) + np.cos(2 * xx) > 0.6
            bands = np.where(bright, 8000, 900)[None] + rng.integers(-300, 300, (13, height, side))
            dem = (800 + 900 * yy + 300 * xx).astype(np.int16)
            window = Window(0, top, side, height)
            dst.write(np.concatenate([bands, np.broadcast_to(dem, (1, height, side))]).astype(np.int16), window=window)
            classes = bright.astype(np.uint8) + (np.sin(9 * yy + xx) > 0.99) * 2
            labels.write(classes.astype(np.uint8)[None], window=window)
    return scene, label


BUILD = """
import json, re, sys, time
from pathlib import Path
from snowcloud import shards
start = time.perf_counter()
shards.build_shard(sys.argv[1], sys.argv[2], sys.argv[3], "bench", json.loads(sys.argv[4]))
peak_kib = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)
print(time.perf_counter() - start, int(peak_kib) * 1024)
"""


def full_scene_build(root: Path, side: int, patches: int, size: int) -> None:
    """Build one shard in a fresh interpreter and print time and peak memory (VmHWM of that process: ru_maxrss
    would keep the RSS of the forked parent across exec)."""
    scene, label = write_large_scene(root / "full", side)
    output = root / "full" / "results" / "shards" / "bench" / "32TNS" / "20210720T101559.h5"
    sampler = {
        "method": "class-balanced",
        "patches_per_date": patches,
        "seed": 0,
        "stride": None,
        "min_labelled_fraction": 1.0,
        "rare_classes": [3],
        "rare_fraction": 0.5,
    }
    options = {"normalisation": "snowcloud-v1", "elevation": True, "patch_size": size, "sampler": sampler}
    command = [sys.executable, "-c", BUILD, str(scene), str(label), str(output), json.dumps(options)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, peak = map(float, result.stdout.split())
    print(
        f"\nbuild_shard on a {side} x {side} x 14 scene, {patches} patches of {size}: {seconds:.1f} s, "
        f"peak RSS {peak / 2**30:.2f} GiB, shard {output.stat().st_size / 2**30:.2f} GiB "
        f"(scene raster {scene.stat().st_size / 2**30:.2f} GiB on disk)"
    )
    shutil.rmtree(root / "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=1024)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=14)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--scene-size", type=int, default=0, help="also build one shard from a scene this large")
    parser.add_argument("--scene-patches", type=int, default=1024)
    parser.add_argument(
        "--main-process",
        action="store_true",
        help="only the main process's time per training batch, before issue 23 and now",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --main-process")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in DataLoader workers; the figures are about reading, not intra-op threading
    n, c, p = args.patches, args.channels, args.size
    root = Path(tempfile.mkdtemp(prefix="bench_shards_", dir=args.dir))
    print(f"{n} patches of {c} x {p} x {p}, batch {BATCH}, {os.cpu_count()} CPUs, scratch {root}")
    try:
        if args.main_process:
            write_shard(root / "plain.h5", n, c, p, None)
            main_process_per_batch(root / "plain.h5", args.workers[-1], args.rounds)
            return
        if args.scene_size:
            full_scene_build(root, args.scene_size, args.scene_patches, p)
        plain, lzf, thesis = root / "plain.h5", root / "lzf.h5", root / "thesis"
        write = {
            "shard (unfiltered)": (write_shard(plain, n, c, p, None), [plain]),
            "shard (lzf)": (write_shard(lzf, n, c, p, "lzf"), [lzf]),
            "thesis .npy + .png": (write_thesis_layout(thesis, n, c, p), thesis_files(thesis)),
        }
        write = {name: (seconds, sum(f.stat().st_size for f in files)) for name, (seconds, files) in write.items()}
        print("\nwrite (including fsync)")
        for name, (seconds, size) in write.items():
            print(f"  {name:20s} {seconds:7.2f} s  {size / 2**30:6.3f} GiB  {n / seconds:8.1f} patches/s")
        base_time, base_size = write["thesis .npy + .png"]
        for name in ("shard (unfiltered)", "shard (lzf)"):
            faster, smaller = base_time / write[name][0], base_size / write[name][1]
            print(f"  {name} vs thesis: {faster:.2f}x faster, {smaller:.2f}x smaller")

        readers = {  # name: (dataset, its files, image dtype through batch_loader or None for a plain DataLoader)
            "shard, batch_loader": (ShardDataset([(plain, None)]), [plain], torch.float32),
            "shard, batch_loader f16": (ShardDataset([(plain, None)]), [plain], torch.float16),
            "shard, DataLoader": (ShardDataset([(plain, None)]), [plain], None),
            "shard lzf, batch_loader": (ShardDataset([(lzf, None)]), [lzf], torch.float32),
            "thesis, DataLoader": (ThesisLayoutDataset(thesis, n), thesis_files(thesis), None),
        }
        rates: dict[tuple[str, str, int], float] = {}
        for cache in ("warm", "cold"):
            print(f"\nrandom-access read, {cache} page cache (patches/s, batch {BATCH})")
            for name, (dataset, files, batched) in readers.items():
                if cache == "warm":
                    read_rate(dataset, 0, batched=batched)  # fill the page cache
                row = []
                for workers in args.workers:
                    dropped = files if cache == "cold" else None
                    rates[name, cache, workers] = read_rate(dataset, workers, dropped, batched)
                    row.append(f"{workers} worker{'s' if workers > 1 else ' '}: {rates[name, cache, workers]:8.1f}")
                print(f"  {name:24s} " + "   ".join(row))
            for workers in args.workers:
                base = rates["thesis, DataLoader", cache, workers]
                ratios = [f"{name} {rates[name, cache, workers] / base:.2f}x" for name in readers if "shard" in name]
                print(f"  vs thesis, {workers} worker(s): " + ", ".join(ratios))

        print("\none process, warm cache (patches/s)")
        direct, sliced = direct_versus_slicing(plain, n)
        print(
            f"  image into a buffer: direct chunk read {direct:8.1f}   h5py read_direct {sliced:8.1f}   ({direct / sliced:.2f}x)"
        )
        plain_rate = read_rate(ShardDataset([(plain, None)]), 0)
        batch_rate = read_rate(ShardDataset([(plain, None)]), 0, batched=torch.float32)
        print(
            f"  0 workers: DataLoader (item by item, default collate) {plain_rate:8.1f}   batch_loader {batch_rate:8.1f}"
        )

        per_worker = rates["shard, batch_loader", "cold", args.workers[0]] / args.workers[0]
        print(
            f"\nper worker (cold, {args.workers[0]} worker): {per_worker:.0f} patches/s; "
            f"~1100 patches/s would need about {1100 / per_worker:.1f} such workers"
        )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
