"""HDF5 patch shards: one per (dataset, tile, date), normalised patches ready to train, with class counts.

Layout (docs/architecture.md): ``image`` (N, C, P, P) float16 chunked one patch per chunk (raw, or through the
lossless filter `compression` names), ``label`` (N, P, P)
uint8 (trained classes 0..K-1 of the dataset's class set, 255 = ignore), ``origin`` (N, 2) int32 row/col in the
scene, ``class_counts`` (N, K + J + 1) int32 pixels of the K trained classes, the J ignored classes and 255 per
patch, ``class_fraction`` (N, K) float32 (trained classes over the patch's pixels of trained classes); attributes
are scalars or JSON text (see :func:`read_attributes`), ``class_set`` the class set (snowcloud.labels). The scene
is normalised row block by row block (each row once, bounded memory) and patches are written in batches to a
temporary file that is renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import h5py
import hdf5plugin  # registers the Blosc filter that `compression: blosc-zstd` shards need, in every reader
import numpy as np
import rasterio
from tqdm import tqdm

import snowcloud
from snowcloud import labels, normalisation, sampling
from snowcloud.atomic import atomic_output
from snowcloud.config import recorded_value_options, validated
from snowcloud.gdal import gdal_env
from snowcloud.labels import IGNORE_INDEX, ClassSet
from snowcloud.provenance import file_identity
from snowcloud.scene import block_strips, check_scene, recorded_preprocess, sub_strips, valid_mask, values_and_valid

log = logging.getLogger(__name__)

FORMAT = "snowcloud-shard/2"  # 2: class_set attribute, class counts of every encoded class
BLOCK_ROWS = 256  # patch corner rows per buffer extension (buffer: C x (BLOCK_ROWS + P + block height) x W x 2 B)
STRIP_ROWS = 32  # scene rows read and normalised at once (float32 temporaries: a few x channels x 32 x width x 4 B)
WRITE_BATCH = 64  # patches per HDF5 write
GDAL_CACHE_MB = 256  # GDAL block cache: holds a row of 512 x 512 tiles of a 14-band 10980-wide scene (161 MB)
# HDF5 filters of `image` and `label` per datasets.<d>.compression (docs/slurm.md, "The shard footprint"): raw
# chunks are read with one direct chunk read each; Blosc with Zstd (byte shuffle) and gzip after HDF5's byte
# shuffle about halve a shard, Blosc at 1.6x and gzip at 4x the CPU per patch read.
COMPRESSION_FILTERS = {
    "none": {},
    "blosc-zstd": dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
    "gzip": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
    "lzf": {"compression": "lzf", "shuffle": True},
}
JSON_ATTRIBUTES = (
    "bands",
    "normalisation",
    "normalisation_statistics",
    "sampler",
    "class_pixel_counts",
    "class_fraction_mean",
    "inputs",
    "scene_shape",
    "preprocess",
    "class_set",
)


class ShardError(ValueError):
    """Inputs that cannot make a shard; the message names the file."""


def build_shard(scene: str | Path, label: str | Path, output: str | Path, dataset: str, options: dict) -> None:
    """Scene raster + label mask -> results/shards/{dataset}/{tile}/{date}.h5 (tile and date from the path)."""
    with gdal_env(GDAL_CACHE_MB):
        _build_shard(scene, label, Path(output), dataset, validated(options, "dataset"))


def _build_shard(scene: str | Path, label: str | Path, output: Path, dataset: str, options: dict) -> None:
    tile, date = output.parent.name, output.stem
    size = options["patch_size"]
    spec = normalisation.spec(options["normalisation"])
    with rasterio.open(scene) as src:
        bands = check_scene(src, options["elevation"], str(scene))
    class_set = ClassSet.from_options(options, f"datasets.{dataset}")
    label_array = labels.read_encoded(label, scene, class_set=class_set)
    with rasterio.open(scene) as src:
        valid = valid_mask(src, len(bands))
    if not valid.any():
        raise ShardError(f"{scene}: the scene has no valid pixel")
    label_array[~valid] = IGNORE_INDEX
    del valid
    origins = sampling.sample_origins(
        label_array != IGNORE_INDEX, label_array, size, options["sampler"], key=f"{tile}/{date}", source=str(scene)
    )
    statistics = normalisation.scene_statistics(spec, scene)
    log.info("%s: %d patches of %d x %d, %s", output, len(origins), size, size, normalisation.describe(spec))
    attributes = {
        "format": FORMAT,
        "dataset": dataset,
        "tile": tile,
        "date": date,
        "bands": bands,
        "normalisation": spec,
        "normalisation_statistics": statistics,
        "patch_size": size,
        "sampler": options["sampler"],
        "scene_shape": list(label_array.shape),
        "preprocess": recorded_value_options(recorded_preprocess(scene)),
        "package_version": snowcloud.__version__,
        "inputs": {"scene": file_identity(scene), "label": [file_identity(f) for f in labels.label_files(label)]},
        "class_set": class_set.options(),
    }
    needs_bytes = len(origins) * size * size * (2 * len(bands) + 1)  # float16 images and uint8 labels, uncompressed
    with atomic_output(output, needs_bytes) as tmp, h5py.File(tmp, "w") as shard:
        normalise = normalisation.Normaliser(spec, statistics)
        counts = _write_patches(
            shard, scene, normalise, len(bands), origins, label_array, size, class_set, options["compression"]
        )
        _write_class_statistics(shard, counts, class_set)
        for key, value in attributes.items():
            shard.attrs[key] = json.dumps(value) if key in JSON_ATTRIBUTES else value


def _write_patches(
    shard: h5py.File,
    scene: str | Path,
    normalise: normalisation.Normaliser,
    channels: int,
    origins: np.ndarray,
    label: np.ndarray,
    size: int,
    class_set: ClassSet,
    compression: str,
) -> np.ndarray:
    """Write image, label (trained classes of the encoded `label`) and origin; return the per-patch class counts."""
    n = len(origins)
    image, labels_out = create_patch_datasets(shard, n, channels, size, compression)
    shard.create_dataset("origin", data=origins, dtype=np.int32, track_times=False)
    counts = np.zeros((n, len(class_columns(class_set))), dtype=np.int32)
    with rasterio.open(scene) as src, tqdm(total=n, desc=f"patches {Path(scene).name}", unit="patch") as progress:
        batches = patch_batches(src, normalise, channels, origins, size, BLOCK_ROWS, WRITE_BATCH)
        for start, images in batches:
            stop = start + len(images)
            patch_labels = np.stack([label[r : r + size, c : c + size] for r, c in origins[start:stop]])
            image[start:stop] = images
            counts[start:stop] = class_counts(patch_labels, class_set)
            labels_out[start:stop] = class_set.trained(patch_labels)
            progress.update(len(images))
    return counts


def create_patch_datasets(
    shard: h5py.File, n: int, channels: int, size: int, compression: str = "none"
) -> tuple[h5py.Dataset, h5py.Dataset]:
    """The empty ``image`` (n, C, P, P) float16 and ``label`` (n, P, P) uint8 datasets, one patch per chunk,
    filtered as COMPRESSION_FILTERS[compression] says."""
    filters = COMPRESSION_FILTERS[compression]
    image = shard.create_dataset(
        "image",
        shape=(n, channels, size, size),
        dtype=np.float16,
        chunks=(1, channels, size, size),
        track_times=False,
        **filters,
    )
    label = shard.create_dataset(
        "label",
        shape=(n, size, size),
        dtype=np.uint8,
        chunks=(1, size, size),
        track_times=False,
        **filters,
    )
    return image, label


def patch_batches(
    src: rasterio.DatasetReader,
    normalise: normalisation.Normaliser,
    channels: int,
    origins: np.ndarray,
    size: int,
    block_rows: int = BLOCK_ROWS,
    batch: int = WRITE_BATCH,
) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, float16 (n, C, P, P)) batches of normalised patches at `origins` (sorted by row).

    A preallocated float16 buffer holds the normalised scene rows [top, top + filled): rows are added up to the
    end of a block row of the raster as the origins move down, and dropped once no later patch needs them, so
    each scene row is read and normalised once. `block_rows` rows of patch corners are served per extension.
    """
    block_height = src.block_shapes[0][0]
    buffer = np.empty((channels, block_rows + size + block_height, src.width), dtype=np.float16)
    top = filled = 0
    start = 0
    while start < len(origins):
        first_row = int(origins[start, 0])
        stop = min(int(np.searchsorted(origins[:, 0], first_row + block_rows)), start + batch)
        needed_end = int(origins[start:stop, 0].max()) + size
        keep = max(top + filled - first_row, 0)
        _move_rows_up(buffer, first_row - top, keep)
        top, filled = first_row, keep
        if needed_end > top + filled:
            read_end = min(-(-needed_end // block_height) * block_height, src.height)
            normalise_rows(src, normalise, top + filled, buffer[:, filled : read_end - top])
            filled = read_end - top
        yield start, np.stack([buffer[:, r - top : r - top + size, c : c + size] for r, c in origins[start:stop]])
        start = stop


def _move_rows_up(buffer: np.ndarray, shift: int, keep: int) -> None:
    """Move buffer rows shift..shift+keep to 0..keep in place, in chunks that do not overlap (no temporary)."""
    if shift == 0:
        return
    for row in range(0, keep, shift):
        n = min(shift, keep - row)
        buffer[:, row : row + n] = buffer[:, row + shift : row + shift + n]


def normalise_rows(src: rasterio.DatasetReader, normalise: normalisation.Normaliser, top: int, out: np.ndarray) -> None:
    """Scene rows top..top + out.shape[1] normalised into `out` (C, rows, W), read block row by block row and
    normalised STRIP_ROWS rows at a time (bounded float32 temporaries)."""
    channels = out.shape[0]
    for window in block_strips(src, top, top + out.shape[1]):
        raw = src.read(indexes=list(range(1, channels + 1)), window=window)
        for rows in sub_strips(window.height, STRIP_ROWS):
            first = window.row_off + rows.start
            source = f"{src.name} rows {first}..{first + rows.stop - rows.start}"
            values, valid = values_and_valid(raw[:, rows])
            out[:, first - top : first - top + values.shape[1]] = normalise(values, valid, source)


def class_columns(class_set: ClassSet) -> tuple[int, ...]:
    """The encoded values the class counts count: trained classes, ignored classes, 255."""
    return (*range(len(class_set.encoded_names)), IGNORE_INDEX)


def class_counts(patch_labels: np.ndarray, class_set: ClassSet) -> np.ndarray:
    """int32 (n, K + J + 1): pixels of each encoded class and of 255 in each (P, P) encoded label patch."""
    columns = list(class_columns(class_set))
    per_value = np.stack([np.bincount(patch.ravel(), minlength=256) for patch in patch_labels])
    unexpected = per_value.sum(axis=1) - per_value[:, columns].sum(axis=1)
    if unexpected.any():
        raise ShardError(f"label patches hold values outside {columns}")
    return per_value[:, columns].astype(np.int32)


def class_fractions(counts: np.ndarray, n_classes: int) -> np.ndarray:
    """float64 (n, n_classes): the first n_classes columns of `counts` over their sum per patch (0 for none)."""
    labelled = counts[:, :n_classes].sum(axis=1, keepdims=True)
    return np.divide(
        counts[:, :n_classes], labelled, out=np.zeros(labelled.shape[:1] + (n_classes,)), where=labelled > 0
    )


def _write_class_statistics(shard: h5py.File, counts: np.ndarray, class_set: ClassSet) -> None:
    n_classes = len(class_set.names)
    fractions = class_fractions(counts, n_classes)
    labelled = counts[:, :n_classes].sum(axis=1) > 0
    shard.create_dataset("class_counts", data=counts, track_times=False)
    shard.create_dataset("class_fraction", data=fractions.astype(np.float32), track_times=False)
    totals = counts.sum(axis=0, dtype=np.int64)
    shard.attrs["class_pixel_counts"] = json.dumps({str(c): int(t) for c, t in zip(class_columns(class_set), totals)})
    mean = fractions[labelled].mean(axis=0) if labelled.any() else np.zeros(n_classes)
    shard.attrs["class_fraction_mean"] = json.dumps(mean.tolist())
    shard.attrs["patches"] = len(counts)


def open_shard(path: str | Path) -> h5py.File:
    """Open a shard read-only, checked to be a FORMAT shard (HDF5's default locking: set
    HDF5_USE_FILE_LOCKING=FALSE where a cluster file system refuses locks; mixing locking flags on one file in one
    process is an HDF5 error)."""
    shard = h5py.File(path, "r")
    found = shard.attrs.get("format")
    if found != FORMAT:
        shard.close()
        raise ShardError(f"{path}: a {found} shard, not {FORMAT}; rebuild the shards")
    return shard


def patch_datasets(shard: h5py.File) -> tuple[h5py.Dataset, h5py.Dataset]:
    """The `image` and `label` datasets of an open shard."""
    return shard["image"], shard["label"]


def read_counts(path: str | Path) -> tuple[dict, np.ndarray]:
    """A shard's decoded attributes and its `class_counts`, checked to be a FORMAT shard."""
    with open_shard(path) as shard:
        return _decoded(shard.attrs), shard["class_counts"][:]


def read_attributes(path: str | Path) -> dict:
    """A shard's attributes with the JSON ones decoded (any format version: what `snowcloud describe` shows)."""
    with h5py.File(path, "r") as shard:
        return _decoded(shard.attrs)


def _decoded(attributes: h5py.AttributeManager) -> dict:
    return {key: json.loads(value) if key in JSON_ATTRIBUTES else _plain(value) for key, value in attributes.items()}


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value
