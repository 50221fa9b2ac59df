"""Full-scene inference figures: windows per second and peak memory of `infer.predict_scene`.

    python benchmarks/bench_infer.py [--rows 768 3072] [--width 10980] [--base-channels 8] [--tta]
                                     [--batch-size 16] [--threads 2] [--device cpu] [--dir DIR]
    python benchmarks/bench_infer.py --device cuda --base-channels 64 --rows 10980 --tta   # the thesis model

For each height in --rows it writes a synthetic 14-band scene raster of --width x rows (int16, nodata -32768, a
band of no-data columns, spatially structured values), saves a U-Net checkpoint (random weights: speed does not
depend on them) and runs predict_scene end to end (reading, snowcloud-v1 normalisation, windows, blending, COG
writing) in a fresh process, so that its peak RSS is its own. It prints windows/s, the peak RSS of each run
and, measured in this run, the ratio of peak RSS between the tallest and the shortest scene (memory bounded by
strips: about 1 while the scene grows), and extrapolates the time of a full 10980 x 10980 tile from the
windows/s of the tallest run. A full tile is --rows 10980 (about 3.4 GB of scene raster under --dir).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from snowcloud import checkpoint, normalisation
from snowcloud.bands import BANDS, CLASSES, ELEVATION
from snowcloud.infer import predict_scene, window_starts, window_stride
from snowcloud.model import build_model, count_parameters

FULL_TILE = 10980
NODATA = -32768


def write_scene(path: Path, rows: int, width: int, strip: int = 256, seed: int = 0) -> None:
    """A synthetic scene raster written strip by strip (bounded memory): bright 'snow/cloud' blobs over dark
    ground, a DEM ramp, and the last 5 % of the columns without data (as at a swath edge)."""
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": width, "height": rows, "count": len(BANDS) + 1, "dtype": "int16",
        "nodata": NODATA, "crs": "EPSG:32632", "transform": rasterio.transform.from_origin(600000, 5200020, 10, 10),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "zstd", "bigtiff": "IF_SAFER",
    }  # fmt: skip
    band_gain = (1 + 0.3 * np.sin(np.arange(len(BANDS)) / 2))[:, None, None]
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate([*BANDS, ELEVATION], start=1):
            dst.set_band_description(i, name)
        for top in range(0, rows, strip):
            height = min(strip, rows - top)
            yy, xx = np.mgrid[top : top + height, 0:width].astype(np.float32) / 300
            bright = np.sin(yy) + np.cos(0.7 * xx) > 0.5
            noise = rng.normal(0, 200, (len(BANDS), height, width)).astype(np.float32)
            dn = np.where(bright, 8000, 900)[None] * band_gain + noise
            values = np.concatenate([dn, (800 + 20 * yy + 10 * xx)[None]]).astype(np.int16)
            values[:, :, int(0.95 * width) :] = NODATA
            dst.write(values, window=rasterio.windows.Window(0, top, width, height))


def save_unet(path: Path, base_channels: int, patch_size: int) -> int:
    """A thesis U-Net checkpoint with random weights; returns its parameter count."""
    bands = [*BANDS, ELEVATION]
    args = {"in_channels": len(bands), "n_classes": len(CLASSES), "base_channels": base_channels}
    torch.manual_seed(0)
    network = build_model("unet", **args)
    metadata = {
        "architecture": "unet", "model_args": args, "bands": bands, "normalisation": normalisation.spec("snowcloud-v1"),
        "patch_size": patch_size, "classes": list(CLASSES), "experiment": "bench",
    }  # fmt: skip
    checkpoint.save_model(path, network, metadata)
    return count_parameters(network)


def run_prediction(model: str, scene: str, output: str, options: dict, threads: int, results) -> None:
    """Child process: one predict_scene, then its wall time and peak RSS (and peak CUDA memory)."""
    start = time.perf_counter()
    predict_scene(model, scene, output, options, threads=threads)
    seconds = time.perf_counter() - start
    cuda_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    results.put((seconds, peak_rss(), cuda_peak))


def peak_rss() -> int:
    """This process's peak resident set size in bytes: VmHWM, which (unlike ru_maxrss, kept across exec) does
    not include the parent's memory at the fork that started this process."""
    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: ru_maxrss (bytes on macOS), which may include the parent's
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmHWM:"))


def windows_of(rows: int, width: int, patch_size: int, overlap: float) -> int:
    stride = window_stride(patch_size, overlap)
    return len(window_starts(rows, patch_size, stride)) * len(window_starts(width, patch_size, stride))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[768, 3072], help="scene heights to run")
    parser.add_argument("--width", type=int, default=FULL_TILE)
    parser.add_argument("--base-channels", type=int, default=8, help="U-Net width (thesis: 64)")
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--tta", action="store_true", help="4-way flip TTA (4 forward passes per window)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    options = {"batch_size": args.batch_size, "overlap": args.overlap, "tta": args.tta, "probabilities": False,
               "device": args.device, "amp": not args.no_amp}  # fmt: skip
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        root = Path(scratch)
        parameters = save_unet(root / "model.pt", args.base_channels, args.patch_size)
        print(f"U-Net base {args.base_channels} ({parameters:,} parameters), {args.patch_size} px windows, overlap "
              f"{args.overlap}, TTA {args.tta}, batch {args.batch_size}, {args.device}, {args.threads} threads")  # fmt: skip
        print(f"{'rows':>6} {'width':>6} {'windows':>8} {'seconds':>8} {'windows/s':>10} {'peak RSS MB':>12} "
              f"{'scene MB':>9}{' CUDA peak MB' if args.device == 'cuda' else ''}")  # fmt: skip
        measured = []
        for rows in args.rows:
            scene = root / "32TNS" / f"rows{rows}.tif"
            scene.parent.mkdir(exist_ok=True)
            write_scene(scene, rows, args.width)
            results = context.Queue()
            child = context.Process(target=run_prediction, args=(str(root / "model.pt"), str(scene),
                                    str(root / f"prediction{rows}.tif"), options, args.threads, results))  # fmt: skip
            child.start()
            seconds, peak, cuda_peak = results.get()
            child.join()
            windows = windows_of(rows, args.width, args.patch_size, args.overlap)
            scene_mb = (len(BANDS) + 1) * rows * args.width * 2 / 2**20
            measured.append((rows, windows, seconds, peak))
            print(f"{rows:>6} {args.width:>6} {windows:>8} {seconds:>8.1f} {windows / seconds:>10.2f} "
                  f"{peak / 2**20:>12.0f} {scene_mb:>9.0f}{f' {cuda_peak / 2**20:>12.0f}' if args.device == 'cuda' else ''}")  # fmt: skip
    (rows_a, _, _, peak_a), (rows_b, windows_b, seconds_b, peak_b) = measured[0], measured[-1]
    full_windows = windows_of(FULL_TILE, FULL_TILE, args.patch_size, args.overlap)
    print(f"peak RSS ratio {rows_b} rows / {rows_a} rows: {peak_b / peak_a:.2f} (scene {rows_b / rows_a:.1f}x taller)")
    print(f"full {FULL_TILE}^2 tile: {full_windows} windows, about {full_windows / (windows_b / seconds_b) / 60:.1f} min "
          f"at the {rows_b}-row rate; a full-tile float32 accumulator alone would be "
          f"{len(CLASSES) * FULL_TILE**2 * 4 / 2**30:.2f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
