"""Shard footprint against read speed: one real shard rewritten raw and with lossless HDF5 filters, then read
through the training loader.

    python benchmarks/bench_shard_compression.py --shard results/shards/<dataset>/<tile>/<date>.h5 [--workers 1 2]

The shard should be a full-size one (benchmarks/bench_season.py --keep DIR makes two, from 10980 x 10980 demo
scenes with the a82e3cd data settings): how well float16 patches compress depends on the scene. Each layout
keeps one patch per chunk (what the loader reads) and is written from the shard's own patches: raw (the
shipped layout), HDF5's gzip and lzf after its byte shuffle, and, where the `hdf5plugin` package is installed,
Blosc with Zstd (byte shuffle) and plain Zstd. Prints per layout: bytes per patch and per 8192-patch date, the
write time, and patches/s through `batch_loader` (batch 32, float32, a random order) with each --workers count,
warm (pages cached) and cold (`sync; echo 3 > /proc/sys/vm/drop_caches` before the epoch, which needs root; else
the shard's own pages are dropped with posix_fadvise, which the output says).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import torch

from snowcloud.loader import EpochSampler, ShardDataset, batch_loader

BATCH = 32
THESIS_PATCHES = 8192
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def layouts() -> dict[str, dict]:
    """Name -> h5py create_dataset filter keywords."""
    found = {
        "raw": {},
        "gzip 4 + shuffle": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
        "gzip 1 + shuffle": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
        "lzf + shuffle": {"compression": "lzf", "shuffle": True},
    }
    try:
        import hdf5plugin
    except ImportError:
        return found
    found["blosc zstd 5 + shuffle"] = dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    found["blosc lz4 5 + shuffle"] = dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    found["zstd 3"] = dict(hdf5plugin.Zstd(clevel=3))
    return found


def rewrite(source: Path, target: Path, filters: dict) -> float:
    """Copy the shard with `image` and `label` rewritten one patch per chunk under `filters`; seconds taken."""
    start = time.perf_counter()
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            if name not in ("image", "label"):
                src.copy(name, dst)
                continue
            data = src[name]
            out = dst.create_dataset(
                name, shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]), track_times=False, **filters
            )
            for begin in range(0, len(data), 64):
                out[begin : begin + 64] = data[begin : begin + 64]
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())
    return time.perf_counter() - start


def drop_caches(path: Path) -> str:
    """Empty the page cache (all of it where we may, else this file's pages); says which."""
    subprocess.run(["sync"], check=True)
    try:
        DROP_CACHES.write_text("3\n")
        return "drop_caches"
    except OSError:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
        return "fadvise"


def cpu_ms_per_patch(path: Path) -> float:
    """CPU milliseconds this process spends per patch reading every patch once, in order, as float32 batches
    (no workers: CPU time is what a loader worker pays, and it is far less disturbed by other load than rates)."""
    dataset = ShardDataset([(path, None)])
    start = time.process_time()
    for begin in range(0, len(dataset), BATCH):
        dataset.read_batch(list(range(begin, min(begin + BATCH, len(dataset)))))
    return 1000 * (time.process_time() - start) / len(dataset)


def read_rate(path: Path, workers: int, cold: bool) -> tuple[float, str]:
    """Patches per second over one epoch in a random order; how the cache was emptied ('' when warm)."""
    dataset = ShardDataset([(path, None)])
    batches = batch_loader(
        dataset, EpochSampler(len(dataset), seed=1), BATCH, image_dtype=torch.float32, num_workers=workers
    )
    how = drop_caches(path) if cold else ""
    start = time.perf_counter()
    count = sum(len(images) for images, _ in batches)
    return count / (time.perf_counter() - start), how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with h5py.File(args.shard, "r") as shard:
        n, shape = len(shard["image"]), shard["image"].shape
    print(f"{args.shard}: {n} patches of {shape[1:]} float16; batch {BATCH}, {os.cpu_count()} CPUs")
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    root = Path(tempfile.mkdtemp(prefix="bench_compression_", dir=args.dir))
    try:
        raw_bytes = None
        for name, filters in layouts().items():
            path = root / f"{name.replace(' ', '_').replace('+', '')}.h5"
            seconds = rewrite(args.shard, path, filters)
            size = path.stat().st_size
            raw_bytes = raw_bytes or size
            cpu_ms = cpu_ms_per_patch(path)
            rates = []
            for cold in (False, True):
                for workers in args.workers:
                    if not cold:
                        read_rate(path, workers, cold=False)  # fill the page cache (and start-up)
                    rate, how = read_rate(path, workers, cold)
                    rates.append(
                        f"{'cold' if cold else 'warm'} {workers}w {rate:6.0f}{' (' + how + ')' if how else ''}"
                    )
            print(
                f"{name:24s} {size / n / 2**20:6.3f} MiB/patch  {size * THESIS_PATCHES / n / 2**30:6.2f} GiB/date "
                f"({size / raw_bytes:4.2f} of raw)  write {n / seconds:6.0f} patches/s  read {cpu_ms:5.1f} CPU ms/patch, "
                "patches/s: " + "  ".join(rates),
                flush=True,
            )
            path.unlink()
    finally:
        shutil.rmtree(root)
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
