"""One synthetic L1C scene: its 13 JP2 bands (and TCI) in a SAFE product, zipped or not, and its label mask.

The scene is rendered strip by strip at 10 m (memory does not grow with the tile), averaged to each band's
native 20 m / 60 m grid, noised, quantised to DN (reflectance x 10000 - RADIO_ADD_OFFSET), and written to
temporary GeoTIFFs that GDAL's JP2OpenJPEG driver then encodes losslessly, tiled like ESA's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from snowcloud.atomic import atomic_output, scratch_folder
from snowcloud.bands import BANDS, RESOLUTION_M
from snowcloud.demo import metadata
from snowcloud.demo.landscape import Landscape, rng_for
from snowcloud.demo.metadata import QUANTIFICATION_VALUE, ProductInfo
from snowcloud.demo.surface import Conditions, render_surface
from snowcloud.demo.tiles import TileGrid
from snowcloud.gdal import gdal_env
from snowcloud.inventory import Product
from snowcloud.labels import CLASSES, IGNORE_INDEX, class_colours
from snowcloud.scene import ZERO_IS_VALUE_BANDS

log = logging.getLogger(__name__)

GENERATION_ROWS = 366  # 10 m rows rendered at once (a multiple of 6); it fixes the random streams: keep it
GDAL_CACHE_MB = 256  # bounds the blocks GDAL keeps while the temporary band files are written
JP2_OPTIONS = dict(QUALITY=100, REVERSIBLE="YES", YCC="NO", BLOCKXSIZE=1024, BLOCKYSIZE=1024)
LABEL_CLOUDS = (2, 4)  # label values that count as cloud cover (4: thin clouds, when labelled)
# Sensor noise (standard deviation of TOA reflectance) at the native resolution of each band.
NOISE = np.array([0.003, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.003, 0.001, 0.002, 0.002])
# Where the swath edge lies for each band, relative to B02 (metres across track): detectors see it apart.
SWATH_EDGE_SHIFT_M = np.array([30, 0, 10, 20, 25, 25, 30, 5, 30, 35, 40, 15, 20], dtype=float)


@dataclass(frozen=True)
class Scene:
    """Everything that decides the content of one demo scene."""

    product: Product
    grid: TileGrid
    seed: int
    conditions: Conditions

    @property
    def radio_add_offset(self) -> int | None:
        """-1000 from processing baseline 04.00 on (DN = reflectance x 10000 + 1000), none before."""
        return -1000 if self.product.baseline >= "0400" else None


def make_scene(product: Product, grid: TileGrid, seed: int, landscape: Landscape, **overrides: object) -> Scene:
    """The scene of a planned product; `overrides` replace fields of its Conditions (tests: swath_edge=None)."""
    conditions = Conditions.for_scene(seed, product.tile, product.date, landscape, grid.bounds)
    return Scene(product, grid, seed, replace(conditions, **overrides))


def write_scene(
    scene: Scene,
    landscape: Landscape,
    label_path: str | Path | None,
    zipped: bool = True,
    gdal_threads: int = 1,
    thin_clouds: bool = False,
) -> None:
    """Write the product at scene.product.path (a .SAFE.zip, or the .SAFE folder with zipped=False) and,
    when given, the label mask (semi-transparent clouds as 4 with `thin_clouds`); both appear whole or not at
    all."""
    scene.product.path.parent.mkdir(parents=True, exist_ok=True)
    label_output = atomic_output(label_path) if label_path is not None else contextlib.nullcontext(None)
    with scratch_folder(scene.product.path, "bands") as tmp, label_output as label_tmp:
        with gdal_env(GDAL_CACHE_MB):
            band_files, counts = _render_bands(scene, landscape, Path(tmp), label_tmp, thin_clouds)
        write_safe(scene.product.path, _product_info(scene, counts), band_files, zipped, gdal_threads)


def write_safe(
    path: Path, info: ProductInfo, band_files: dict[str, Path], zipped: bool = True, gdal_threads: int = 1
) -> Path:
    """Assemble a SAFE product from one raster per band (any GDAL format; encoded to lossless JP2), its
    metadata XML and manifest: at `path` (.SAFE.zip) or, with zipped=False, the .SAFE folder beside it.
    Returns the path written."""
    target = path if zipped else path.with_suffix("")
    with scratch_folder(target, "safe") as tmp:
        safe = Path(tmp) / info.name
        with rasterio.Env(GDAL_NUM_THREADS=str(gdal_threads)):
            for band, source in band_files.items():
                jp2 = safe / f"{info.band_file(band)}.jp2"
                jp2.parent.mkdir(parents=True, exist_ok=True)
                rasterio.shutil.copy(source, jp2, driver="JP2OpenJPEG", **JP2_OPTIONS)
        (safe / "MTD_MSIL1C.xml").write_bytes(metadata.product_metadata(info))
        (safe / "GRANULE" / info.granule / "MTD_TL.xml").write_bytes(metadata.tile_metadata(info))
        for folder in (
            "DATASTRIP",
            "AUX_DATA",
            "HTML",
            "rep_info",
            f"GRANULE/{info.granule}/QI_DATA",
            f"GRANULE/{info.granule}/AUX_DATA",
        ):
            (safe / folder).mkdir(parents=True, exist_ok=True)
        (safe / "manifest.safe").write_bytes(metadata.manifest(info, _checksums(safe)))
        if zipped:
            with atomic_output(target) as partial:
                _zip_folder(safe, partial, info.generated)
        else:
            shutil.rmtree(target, ignore_errors=True)
            safe.rename(target)
    log.info("wrote %s", target)
    return target


def _render_bands(
    scene: Scene, landscape: Landscape, work: Path, label_path: Path | None, thin_clouds: bool = False
) -> tuple[dict[str, Path], dict[str, int]]:
    """Render all strips into one temporary GeoTIFF per band (plus TCI) and the label mask."""
    grid = scene.grid
    offset = scene.radio_add_offset or 0
    files = {band: work / f"{band}.tif" for band in (*BANDS, "TCI")}
    datasets = {}
    for band in BANDS:
        rows, cols = grid.shape(RESOLUTION_M[band])
        datasets[band] = rasterio.open(
            files[band],
            "w",
            driver="GTiff",
            width=cols,
            height=rows,
            count=1,
            dtype="uint16",
            crs=grid.crs,
            transform=grid.transform(RESOLUTION_M[band]),
            tiled=True,
            blockxsize=512,
            blockysize=512,
        )
    datasets["TCI"] = rasterio.open(
        files["TCI"],
        "w",
        driver="GTiff",
        width=grid.size,
        height=grid.size,
        count=3,
        dtype="uint8",
        crs=grid.crs,
        transform=grid.transform(),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        photometric="RGB",
    )
    counts = {"pixels": grid.size * grid.size, "nodata": 0, "cloud": 0}
    x = grid.x0 + 10 * (np.arange(grid.size) + 0.5)
    with _label_writer(label_path, grid, thin_clouds) as labels_out:
        try:
            for strip, row in enumerate(range(0, grid.size, GENERATION_ROWS)):
                rows = min(GENERATION_ROWS, grid.size - row)
                y = grid.y0 - 10 * (row + np.arange(rows) + 0.5)
                texture = 1 + 0.06 * rng_for(scene.seed, "texture", grid.tile, strip).standard_normal(
                    (rows, grid.size), dtype=np.float32
                )
                surface = render_surface(landscape, scene.conditions, x, y, np.clip(texture, 0.75, 1.25))
                toa = surface.toa()
                valid = np.ones((rows, grid.size), dtype=bool)
                visible = {}
                for index, band in enumerate(BANDS):
                    k = RESOLUTION_M[band] // 10
                    native = toa[index].reshape(rows // k, k, grid.size // k, k).mean(axis=(1, 3))
                    noise = rng_for(scene.seed, "noise", grid.tile, scene.product.date, index, strip)
                    native += NOISE[index] * noise.standard_normal(native.shape, dtype=np.float32)
                    # As in real products, DN 0 is left for no data, except in B10, which reads 0 over dark water
                    # and in deep shadow (without the offset of baseline 04.00); scene.ZERO_IS_VALUE_BANDS.
                    lowest = 0 if band in ZERO_IS_VALUE_BANDS else 1
                    dn = np.clip(np.rint(native * QUANTIFICATION_VALUE) - offset, lowest, 65535).astype(np.uint16)
                    band_valid = _native_validity(scene, band, row // k, rows // k)
                    dn[~band_valid] = metadata.NODATA
                    datasets[band].write(dn, 1, window=Window(0, row // k, grid.size // k, rows // k))
                    valid &= np.repeat(np.repeat(band_valid, k, axis=0), k, axis=1)
                    if band in ("B02", "B03", "B04"):
                        visible[band] = dn
                tci = np.stack([_true_colour(visible[band], offset) for band in ("B04", "B03", "B02")])
                datasets["TCI"].write(np.where(valid, tci, 0).astype(np.uint8), window=Window(0, row, grid.size, rows))
                label = surface.labels(thin_clouds)
                label[~valid] = IGNORE_INDEX
                counts["nodata"] += int((~valid).sum())
                counts["cloud"] += int(np.isin(label, LABEL_CLOUDS).sum())
                if labels_out is not None:
                    labels_out.write(label, 1, window=Window(0, row, grid.size, rows))
        finally:
            for dataset in datasets.values():
                dataset.close()
    return files, counts


@contextlib.contextmanager
def _label_writer(path: Path | None, grid: TileGrid, thin_clouds: bool) -> Iterator[rasterio.io.DatasetWriter | None]:
    """An open label GeoTIFF (uint8 with a colour table), or None when no label is wanted."""
    if path is None:
        yield None
        return
    profile = dict(
        driver="GTiff",
        width=grid.size,
        height=grid.size,
        count=1,
        dtype="uint8",
        crs=grid.crs,
        transform=grid.transform(),
        nodata=IGNORE_INDEX,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dataset:
        names = (*CLASSES, "thin_cloud") if thin_clouds else CLASSES
        dataset.write_colormap(1, {value: (*rgb, 255) for value, rgb in class_colours(names).items()})
        thin = ", 4 thin (semi-transparent) cloud" if thin_clouds else ""
        dataset.update_tags(CLASSES=f"0 background, 1 snow, 2 cloud, 3 water{thin}, 255 not labelled")
        yield dataset


def _native_validity(scene: Scene, band: str, first_row: int, rows: int) -> np.ndarray:
    """Which native pixels of a band lie inside the swath (pixel centres on the valid side of its edge)."""
    grid = scene.grid
    resolution = RESOLUTION_M[band]
    cols = grid.size * 10 // resolution
    if scene.conditions.swath_edge is None:
        return np.ones((rows, cols), dtype=bool)
    nx, ny, c = scene.conditions.swath_edge
    x = grid.x0 + resolution * (np.arange(cols) + 0.5)
    y = grid.y0 - resolution * (first_row + np.arange(rows) + 0.5)
    return (nx * x[None, :] + ny * y[:, None]) < c + SWATH_EDGE_SHIFT_M[BANDS.index(band)]


def _true_colour(dn: np.ndarray, offset: int) -> np.ndarray:
    """ESA's TCI: reflectance 0..0.2 mapped to 1..255 (0 is no data)."""
    reflectance = (dn.astype(np.float32) + offset) / QUANTIFICATION_VALUE
    return np.clip(np.rint(reflectance / 0.2 * 254) + 1, 1, 255)


def _product_info(scene: Scene, counts: dict[str, int]) -> ProductInfo:
    product, grid, conditions = scene.product, scene.grid, scene.conditions
    sensing = datetime.strptime(product.date, "%Y%m%dT%H%M%S")
    valid = max(counts["pixels"] - counts["nodata"], 1)
    return ProductInfo(
        name=product.path.name.removesuffix(".zip"),
        mission=product.mission,
        tile=product.tile,
        sensing=sensing,
        generated=datetime.strptime(product.generated, "%Y%m%dT%H%M%S"),
        baseline=product.processing_baseline,
        orbit=int(product.orbit),
        absolute_orbit=absolute_orbit(product.mission, sensing),
        radio_add_offset=scene.radio_add_offset,
        epsg=grid.epsg,
        x0=grid.x0,
        y0=grid.y0,
        size=grid.size,
        sun_zenith=conditions.sun_zenith_deg,
        sun_azimuth=conditions.sun_azimuth_deg,
        cloudy_percentage=100 * counts["cloud"] / valid,
        nodata_percentage=100 * counts["nodata"] / counts["pixels"],
    )


def absolute_orbit(mission: str, sensing: datetime) -> int:
    """A plausible absolute orbit number: 143 orbits per 10 days since launch."""
    launch = datetime(2015, 6, 23) if mission == "S2A" else datetime(2017, 3, 7)
    return 1 + int((sensing - launch).total_seconds() / 86400 * 14.3)


def _checksums(folder: Path) -> dict[str, tuple[int, str]]:
    """Size and MD5 of every file under the SAFE folder, by relative path."""
    sums = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        sums[path.relative_to(folder).as_posix()] = (path.stat().st_size, digest.hexdigest())
    return sums


def _zip_folder(safe: Path, target: Path, generated: datetime) -> None:
    """Zip the SAFE folder (as ESA does: the folder itself at the top), reproducibly: fixed order and times.
    JP2 files are stored (they are compressed already), XML is deflated."""
    when = generated.timetuple()[:6]
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted([safe, *safe.rglob("*")]):
            name = path.relative_to(safe.parent).as_posix()
            if path.is_dir():
                info = zipfile.ZipInfo(name + "/", date_time=when)
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
                continue
            info = zipfile.ZipInfo(name, date_time=when)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_STORED if path.suffix == ".jp2" else zipfile.ZIP_DEFLATED
            info.file_size = path.stat().st_size
            with open(path, "rb") as source, archive.open(info, "w", force_zip64=info.file_size > 2**31) as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
