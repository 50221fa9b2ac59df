"""What checking a product against its manifest.safe costs `open_safe`, zipped and unpacked.

    python benchmarks/bench_safe.py PRODUCT.SAFE.zip [--repeat 3] [--dir DIR]

Makes, under DIR, the product unpacked and a copy of each form without manifest.safe (the same product with
nothing declared to check), then times `open_safe` on the four, files in the page cache (one untimed read
first), and prints the median seconds, what the manifest check adds, and that per MB of the band files and the
metadata it checks. A full-size product: `snowcloud demo DIR --size 10980 --tiles 32TNS --dates
20220201T102209` (387 MB); needs about 3 x its size of free disk under DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from snowcloud.safe import MANIFEST_NAME, open_safe


def without_manifest_zip(product: Path, target: Path) -> Path:
    """A copy of a zipped product without its manifest.safe (members copied as they are stored)."""
    with zipfile.ZipFile(product) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            if info.filename.rsplit("/", 1)[-1] == MANIFEST_NAME:
                continue
            with original.open(info) as source, copy.open(info, "w", force_zip64=info.file_size > 2**31) as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    return target


def median_seconds(product: Path, repeat: int) -> float:
    open_safe(product)  # warms the page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        open_safe(product)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def checked_megabytes(product: Path) -> float:
    """MB of the files open_safe checks against the manifest: the 13 bands and the metadata XML."""
    safe = open_safe(product)
    with zipfile.ZipFile(product) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    metadata = next(size for name, size in sizes.items() if name.endswith("/MTD_MSIL1C.xml"))
    return (sum(sizes[member] for member in safe.band_members.values()) + metadata) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("product", type=Path, help="a .SAFE.zip")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        scratch = Path(scratch)
        with zipfile.ZipFile(args.product) as archive:
            archive.extractall(scratch / "unpacked")
        (folder,) = (scratch / "unpacked").glob("*.SAFE")
        bare_folder = scratch / "bare" / folder.name
        shutil.copytree(folder, bare_folder)
        os.unlink(bare_folder / MANIFEST_NAME)
        bare_zip = without_manifest_zip(args.product, scratch / args.product.name)
        megabytes = checked_megabytes(args.product)
        print(f"{args.product.name}: {megabytes:.0f} MB of band files and metadata checked; load {os.getloadavg()}")
        for form, checked, bare in (("zip", args.product, bare_zip), ("folder", folder, bare_folder)):
            with_manifest, without = median_seconds(checked, args.repeat), median_seconds(bare, args.repeat)
            extra = with_manifest - without
            print(
                f"  {form:6}: open_safe {with_manifest:6.2f} s with the manifest check, {without:6.2f} s without: "
                f"+{extra:.2f} s, {1000 * extra / megabytes:.2f} ms per MB"
            )


if __name__ == "__main__":
    main()
