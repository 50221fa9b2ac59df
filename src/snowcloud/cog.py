"""Cloud Optimized GeoTIFFs written strip by strip, compressed once, with 2 x 2 average overviews.

GDAL's COG driver needs the whole image first (a temporary copy), compresses it in a pass of its own, and in
GDAL 3.10 only writes pixel-interleaved files. `CogWriter` instead takes the image strip by strip: each
512-row band of tiles of the full-resolution image, and of every overview level (2 x 2 means over valid
pixels, each level made from the previous one as the strips pass, the values of GDAL's AVERAGE resampling),
is written as a small tiled, compressed, band-interleaved GeoTIFF as soon as it is complete (GDAL compresses
its tiles in parallel threads). `assemble_cog` then copies those compressed tiles, byte for byte, into one
file with the layout of GDAL's COG driver (https://gdal.org/drivers/raster/cog.html, "File format details"):
header, the "ghost area" declaring the layout, the IFDs of the image and of its overviews (largest first)
with their tag values, the tile offset and size arrays, then the tiles of the smallest overview up to the
full-resolution image, each with its 4-byte size leader and 4-byte trailer. GDAL reports such a file as
LAYOUT=COG.

The prediction masks keep GDAL's COG driver (`snowcloud.mask.write_cog`): their overviews are MODE, not means, and
a mask's 1 byte a pixel makes the driver's extra pass 1 to 2 % of a prediction (`benchmarks/bench_mask_cog.py`).
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from snowcloud.resample import Scratch

GHOST_AREA = (
    "LAYOUT=IFDS_BEFORE_DATA\n"
    "BLOCK_ORDER=ROW_MAJOR\n"
    "BLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\n"
    "KNOWN_INCOMPATIBLE_EDITION=NO\n "
)
# TIFF tags
NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 254, 256, 257, 324, 325
PLANAR_CONFIGURATION, SAMPLES_PER_PIXEL, TILE_WIDTH, TILE_LENGTH = 284, 277, 322, 323
STRUCTURE_TAGS = {258, 259, 262, 277, 284, 317, 322, 323, 338, 339, 42113}  # what an overview IFD repeats
REDUCED_IMAGE = 1
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
SHORT, LONG, LONG8 = 3, 4, 16
CLASSIC_LIMIT = 2**32
SUM_CHUNK_PIXELS = 1 << 17  # int16 pixels averaged at once: work arrays of 0.25 MB


def average_2x2(values: np.ndarray, nodata: int, scratch: Scratch | None = None) -> np.ndarray:
    """(bands, rows, cols) -> (bands, ceil(rows / 2), ceil(cols / 2)): the mean of each 2 x 2 block over its
    valid pixels, rounded half up; nodata where none is valid. A pixel is valid in all bands or in none.
    With `scratch`, the result lives there until its next use."""
    scratch = scratch or Scratch()
    bands, rows, cols = values.shape
    if rows % 2 or cols % 2:
        values = np.pad(values, ((0, 0), (0, rows % 2), (0, cols % 2)), constant_values=nodata)
    mean = scratch.array("mean", (bands, (rows + 1) // 2, (cols + 1) // 2), values.dtype)
    for band, band_mean in zip(values, mean):
        _mean_2x2(band, band_mean, scratch)
    valid = values[0] != nodata
    if not valid.all():
        _average_partial_blocks(values, valid, nodata, mean)
    return mean


def _mean_2x2(band: np.ndarray, mean: np.ndarray, scratch: Scratch) -> None:
    """Means of the 2 x 2 blocks of an int16 band of even size into `mean`, rounded half up, a few rows at a
    time (the int32 work arrays stay in the CPU's cache). Two neighbouring int16 values are read as one int32
    (contiguous, vectorised), whose halves come back by arithmetic shifts; their sum does not depend on the
    byte order."""
    packed = np.ascontiguousarray(band).view(np.int32)
    step = max(2, SUM_CHUNK_PIXELS // band.shape[1] // 2 * 2)
    for first in range(0, packed.shape[0], step):
        rows = packed[first : first + step]
        pairs = scratch.array("pairs", rows.shape, np.int32)
        high = scratch.array("high", rows.shape, np.int32)
        np.left_shift(rows, 16, out=pairs)
        pairs >>= 16
        np.right_shift(rows, 16, out=high)
        pairs += high
        total = high[: rows.shape[0] // 2]
        np.add(pairs[0::2], pairs[1::2], out=total)
        total += 2
        total >>= 2  # floor((total + 2) / 4): the mean of 4 valid pixels, rounded half up
        np.copyto(mean[first // 2 : first // 2 + total.shape[0]], total, casting="unsafe")


def _average_partial_blocks(values: np.ndarray, valid: np.ndarray, nodata: int, mean: np.ndarray) -> None:
    """Fix the blocks of `mean` with fewer than 4 valid pixels: the mean over the valid ones, nodata if none."""
    quarters = [values[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]
    valid_quarters = [valid[i::2, j::2] for i in (0, 1) for j in (0, 1)]
    count = sum(v.astype(np.int8) for v in valid_quarters)
    rows, cols = np.nonzero((count > 0) & (count < 4))
    if rows.size:
        partial = sum(
            np.where(v[rows, cols], q[:, rows, cols], 0).astype(np.int32) for q, v in zip(quarters, valid_quarters)
        )
        n = count[rows, cols].astype(np.int32)
        mean[:, rows, cols] = np.floor_divide(2 * partial + n, 2 * n)
    np.copyto(mean, mean.dtype.type(nodata), where=count == 0)


class CogWriter(contextlib.AbstractContextManager):
    """Writes a (count, height, width) image given strip by strip, top to bottom, as a COG at `target`.

    `profile` holds the image's rasterio profile (width, height, count, dtype, nodata, crs, transform);
    `creation` the GTiff options of its tiles (compress, predictor, zstd_level, ...). With `overviews`,
    levels of 2 x 2 averages are added until one fits in a tile. Temporary parts lie beside `target` and are
    removed on exit, also after an error.
    """

    def __init__(
        self, target: Path, profile: dict, overviews: bool, threads: int = 1, block_size: int = 512, **creation: object
    ) -> None:
        self.target = Path(target)
        self.profile = {
            key: profile[key] for key in ("width", "height", "count", "dtype", "nodata", "crs", "transform")
        }
        self.nodata = profile["nodata"]
        self.block_size = block_size
        self.tile_options = dict(
            tiled=True,
            blockxsize=block_size,
            blockysize=block_size,
            interleave="band",
            num_threads=str(threads),
            **creation,
        )
        width, height = profile["width"], profile["height"]
        self.levels = [_Level(self, 0, width, height)]
        while overviews and max(width, height) > block_size:
            width, height = (width + 1) // 2, (height + 1) // 2
            self.levels.append(_Level(self, len(self.levels), width, height))
        for finer, coarser in zip(self.levels, self.levels[1:]):
            finer.coarser = coarser
        self.next_row = 0
        self.files: list[Path] = []

    def write(self, values: np.ndarray, row: int) -> None:
        """The full-resolution rows [row, row + values.shape[1]) of every band (strips come in order)."""
        if row != self.next_row:
            raise ValueError(f"{self.target}: strip at row {row}, expected row {self.next_row}")
        self.levels[0].add(values)
        self.next_row += values.shape[1]

    def finish(self, describe: Callable[[rasterio.io.DatasetWriter], None] | None = None) -> None:
        """Write the COG once every row has come; `describe(dataset)` sets its metadata (tags, band
        descriptions, scales, ...) on a dataset of the image's profile."""
        if self.next_row != self.profile["height"]:
            raise ValueError(f"{self.target}: {self.next_row} of {self.profile['height']} rows written")
        self.levels[0].close()
        template = self._file("template")
        with rasterio.open(
            template, "w", driver="GTiff", **self.profile, **self.tile_options, sparse_ok=True
        ) as dataset:
            if describe is not None:
                describe(dataset)
        size = assemble_cog(template, [level.parts for level in self.levels], self.target)
        if self.target.stat().st_size != size:
            raise OSError(f"{self.target}: {self.target.stat().st_size} bytes written of {size}")
        self._remove_files()

    def __exit__(self, *error: object) -> None:
        self._remove_files()

    def _file(self, name: str) -> Path:
        path = self.target.with_name(f"{self.target.stem}.{name}.tif")
        self.files.append(path)
        return path

    def _remove_files(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        self.files = []


class _Level:
    """One resolution level of a CogWriter: its rows go into parts of one 512-row band of tiles each, and
    their 2 x 2 averages on to the next coarser level. A part is written in one go, each band in one call
    that covers its tiles whole, and closed at once (GDAL compresses its tiles then): a tile is never
    flushed half filled and read back (with other threads filling GDAL's block cache, such a tile could
    come back empty). A part that lies within one strip is written from the strip's rows; the rows of one
    that spans strips are gathered in a buffer of the level."""

    def __init__(self, writer: CogWriter, index: int, width: int, height: int) -> None:
        self.writer, self.index, self.width, self.height = writer, index, width, height
        self.coarser: _Level | None = None
        self.parts: list[Path] = []
        self.gathered = 0  # rows of the next part in the part buffer
        self.done = 0  # rows in written parts
        self.carry: np.ndarray | None = None  # an odd last row, averaged with the first row of the next strip
        self.scratch = Scratch()

    def add(self, values: np.ndarray) -> None:
        if self.coarser is not None:
            self._pass_down(values)
        start = 0
        while start < values.shape[1]:
            part_rows = min(self.writer.block_size, self.height - self.done)
            take = min(part_rows - self.gathered, values.shape[1] - start)
            if take == part_rows:
                self._write_part(values[:, start : start + take])
            else:
                buffer = self.scratch.array("part", (values.shape[0], part_rows, self.width), values.dtype)
                buffer[:, self.gathered : self.gathered + take] = values[:, start : start + take]
                self.gathered += take
                if self.gathered == part_rows:
                    self._write_part(buffer)
                    self.gathered = 0
            start += take

    def close(self) -> None:
        """After the last strip: the odd last row, if any, averaged alone; every part written."""
        if self.coarser is not None:
            if self.carry is not None:
                self.coarser.add(average_2x2(self.carry, self.writer.nodata, self.scratch))
                self.carry = None
            self.coarser.close()
        if self.done != self.height:
            raise ValueError(f"{self.writer.target}: level {self.index} holds {self.done} of {self.height} rows")

    def _pass_down(self, values: np.ndarray) -> None:
        """2 x 2 averages of the rows to the coarser level (an odd last row waits for the next strip)."""
        if self.carry is not None:
            joined = np.concatenate([self.carry, values[:, :1]], axis=1)
            self.carry, values = None, values[:, 1:]
            self.coarser.add(average_2x2(joined, self.writer.nodata, self.scratch))
        even = values.shape[1] - values.shape[1] % 2
        if even:
            self.coarser.add(average_2x2(values[:, :even], self.writer.nodata, self.scratch))
        if even < values.shape[1]:
            self.carry = values[:, even:].copy()

    def _write_part(self, values: np.ndarray) -> None:
        """One part from its rows (count, rows, width), written band by band and closed."""
        path = self.writer._file(f"level{self.index}.part{len(self.parts)}")
        count, rows = values.shape[:2]
        with warnings.catch_warnings():  # a part needs no georeference: the COG takes it from the template
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            part = rasterio.open(
                path,
                "w",
                driver="GTiff",
                width=self.width,
                height=rows,
                count=count,
                dtype=values.dtype,
                **self.writer.tile_options,
            )
        self.parts.append(path)
        with part:
            for band in range(count):  # a band's rows are contiguous: given as 3-D, rasterio writes them uncopied
                part.write(values[band : band + 1], [band + 1])
        check_tiles_written(path)
        self.done += rows


@dataclass
class _Entry:
    """A TIFF tag: its type, count and value bytes (in the file's byte order)."""

    type: int
    count: int
    data: bytes


@dataclass
class _Ifd:
    order: str  # "<" or ">"
    entries: dict[int, _Entry]

    def numbers(self, tag: int) -> np.ndarray:
        entry = self.entries[tag]
        return np.frombuffer(entry.data, dtype=self.order + {SHORT: "u2", LONG: "u4", LONG8: "u8"}[entry.type]).astype(
            np.int64
        )

    def number(self, tag: int) -> int:
        return int(self.numbers(tag)[0])


def read_ifd(path: Path) -> _Ifd:
    """The first IFD of a TIFF or BigTIFF file."""
    with open(path, "rb") as file:
        header = file.read(16)
        order = {b"II": "<", b"MM": ">"}.get(header[:2])
        if order is None:
            raise ValueError(f"{path} is not a TIFF file")
        big = struct.unpack(order + "H", header[2:4])[0] == 43
        offset_format, count_format, inline = ("Q", "Q", 8) if big else ("I", "H", 4)
        file.seek(struct.unpack(order + offset_format, header[8:16] if big else header[4:8])[0])
        (n,) = struct.unpack(order + count_format, file.read(struct.calcsize(count_format)))
        raw = file.read(n * (4 + 2 * inline))
        entries = {}
        for index in range(n):
            tag, kind, count, value = struct.unpack_from(
                f"{order}HH{count_format.replace('H', 'I')}{inline}s", raw, index * (4 + 2 * inline)
            )
            size = TYPE_SIZES[kind] * count
            if size <= inline:
                data = value[:size]
            else:
                file.seek(struct.unpack(order + offset_format, value)[0])
                data = file.read(size)
            entries[tag] = _Entry(kind, count, data)
    return _Ifd(order, entries)


@dataclass
class _LevelTiles:
    """Where each tile of one level comes from, in the level's tile order (plane by plane, row by row)."""

    width: int
    height: int
    parts: list[Path]
    part: np.ndarray  # index into parts
    offsets: np.ndarray
    sizes: np.ndarray


def check_tiles_written(path: Path) -> None:
    """Read back the tile index of a GeoTIFF just written: every tile present and within the file (GDAL does
    not always report a tile it failed to flush, e.g. on a full disk)."""
    try:
        ifd = read_ifd(path)
    except (ValueError, struct.error) as error:
        raise OSError(f"{path} was not written whole: {error}") from error
    offsets, sizes = ifd.numbers(TILE_OFFSETS), ifd.numbers(TILE_BYTE_COUNTS)
    missing = np.flatnonzero((sizes == 0) | (offsets == 0) | (offsets + sizes > path.stat().st_size))
    if missing.size:
        raise OSError(
            f"{path}: {missing.size} of {sizes.size} tiles were not written whole (file of {path.stat().st_size} bytes)"
        )


def assemble_cog(template: Path, levels: list[list[Path]], target: Path) -> int:
    """Write the COG `target` from the tags of `template` (a GeoTIFF of the full image without tiles) and
    the tiles of `levels` (full resolution first, then the overviews by decreasing size; each a list of
    parts: GeoTIFFs of consecutive rows of tiles, tiled and compressed like the template), copied unchanged.
    Returns the size the file must have."""
    main = read_ifd(template)
    tiles = [_level_tiles(parts, main) for parts in levels]
    directories = _directories(main, tiles)
    data_size = sum(int(level.sizes.sum()) + 8 * np.count_nonzero(level.sizes) for level in tiles)
    big = len(_encode_header(main.order, False, directories, tiles)) + data_size >= CLASSIC_LIMIT
    position = len(_encode_header(main.order, big, directories, tiles))
    offsets: list[np.ndarray] = [np.empty(0)] * len(tiles)
    for index in reversed(range(len(tiles))):  # the smallest overview first, the full resolution last
        sizes = tiles[index].sizes
        steps = np.where(sizes > 0, sizes + 8, 0)  # 4-byte leader, tile, 4-byte trailer
        offsets[index] = np.where(sizes > 0, position + 4 + np.cumsum(steps) - steps, 0)
        position += int(steps.sum())
    with open(target, "wb") as out:
        out.write(_encode_header(main.order, big, directories, tiles, offsets))
        for level in reversed(tiles):
            _copy_tiles(out, level)
    return position


def _level_tiles(parts: list[Path], main: _Ifd) -> _LevelTiles:
    ifds = [read_ifd(path) for path in parts]
    for path, ifd in zip(parts, ifds):
        for tag in STRUCTURE_TAGS - {42113}:
            if main.entries.get(tag) != ifd.entries.get(tag):
                raise ValueError(f"{path}: TIFF tag {tag} differs from the image's")
    tile_width, tile_length = main.number(TILE_WIDTH), main.number(TILE_LENGTH)
    planes = main.number(SAMPLES_PER_PIXEL) if main.number(PLANAR_CONFIGURATION) == 2 else 1
    width = ifds[0].number(IMAGE_WIDTH)
    heights = [ifd.number(IMAGE_LENGTH) for ifd in ifds]
    part, offsets, sizes = [], [], []
    for plane in range(planes):
        for index, (ifd, height) in enumerate(zip(ifds, heights)):
            per_plane = math.ceil(height / tile_length) * math.ceil(width / tile_width)
            take = slice(plane * per_plane, (plane + 1) * per_plane)
            part.append(np.full(per_plane, index))
            offsets.append(ifd.numbers(TILE_OFFSETS)[take])
            sizes.append(ifd.numbers(TILE_BYTE_COUNTS)[take])
    return _LevelTiles(width, sum(heights), parts, *(np.concatenate(arrays) for arrays in (part, offsets, sizes)))


def _directories(main: _Ifd, tiles: list[_LevelTiles]) -> list[dict[int, _Entry]]:
    """The tags of each level's IFD, tile offsets and sizes left out: the template's for the full
    resolution, its structure tags with the level's size for an overview (a reduced-resolution subfile)."""

    def long(value: int) -> _Entry:
        return _Entry(LONG, 1, struct.pack(main.order + "I", value))

    image = {
        tag: entry
        for tag, entry in main.entries.items()
        if tag not in (NEW_SUBFILE_TYPE, TILE_OFFSETS, TILE_BYTE_COUNTS)
    }
    directories = [image]
    for level in tiles[1:]:
        overview = {tag: entry for tag, entry in image.items() if tag in STRUCTURE_TAGS}
        overview.update(
            {NEW_SUBFILE_TYPE: long(REDUCED_IMAGE), IMAGE_WIDTH: long(level.width), IMAGE_LENGTH: long(level.height)}
        )
        directories.append(overview)
    return directories


def _encode_header(
    order: str,
    big: bool,
    directories: list[dict[int, _Entry]],
    tiles: list[_LevelTiles],
    offsets: list[np.ndarray] | None = None,
) -> bytes:
    """Everything before the tile data: header, ghost area, each IFD followed by its tag values, then the
    tile offset and size arrays of all IFDs (the tile offsets, zero where not given, do not change its size)."""
    inline, offset_format, count_format = (8, "Q", "Q") if big else (4, "I", "H")
    entry_format = f"{order}HH{'Q' if big else 'I'}"
    ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(GHOST_AREA):06d} bytes\n{GHOST_AREA}".encode("ascii")
    start = (16 if big else 8) + len(ghost)
    start += start % 2
    arrays = []
    for index, level in enumerate(tiles):
        starts = np.zeros_like(level.sizes) if offsets is None else offsets[index]
        arrays.append(
            {
                TILE_OFFSETS: _Entry(
                    LONG8 if big else LONG, len(starts), starts.astype(order + ("u8" if big else "u4")).tobytes()
                ),
                TILE_BYTE_COUNTS: _Entry(LONG, len(level.sizes), level.sizes.astype(order + "u4").tobytes()),
            }
        )

    def outside(entry: _Entry) -> int:
        """Bytes the value takes after the IFD (word aligned), 0 when it fits in the entry."""
        size = len(entry.data)
        return 0 if size <= inline else size + size % 2

    ifd_sizes = [
        struct.calcsize(order + count_format) + (len(d) + len(a)) * (4 + 2 * inline) + inline
        for d, a in zip(directories, arrays)
    ]
    positions = [start]
    for directory, size in zip(directories, ifd_sizes):
        positions.append(positions[-1] + size + sum(map(outside, directory.values())))
    array_position = positions.pop()
    if big:
        head = struct.pack(order + "HHHQ", 43, 8, 0, start)
    else:
        head = struct.pack(order + "HI", 42, start)
    out = bytearray((b"II" if order == "<" else b"MM") + head + ghost)
    out += bytes(start - len(out))
    array_data = bytearray()
    for index, (directory, tile_arrays) in enumerate(zip(directories, arrays)):
        entries = sorted((directory | tile_arrays).items())
        ifd = bytearray(struct.pack(order + count_format, len(entries)))
        values = bytearray()
        for tag, entry in entries:
            if entry.type in (LONG8, 17, 18) and not big and tag not in tile_arrays:
                raise ValueError(f"TIFF tag {tag} of type {entry.type} needs a BigTIFF")
            if outside(entry) == 0:
                field = entry.data.ljust(inline, b"\0")
            elif tag in tile_arrays:
                field = struct.pack(order + offset_format, array_position + len(array_data))
                array_data += entry.data + bytes(outside(entry) - len(entry.data))
            else:
                field = struct.pack(order + offset_format, positions[index] + ifd_sizes[index] + len(values))
                values += entry.data + bytes(outside(entry) - len(entry.data))
            ifd += struct.pack(entry_format, tag, entry.type, entry.count) + field
        ifd += struct.pack(order + offset_format, positions[index + 1] if index + 1 < len(positions) else 0)
        out += ifd + values
    return bytes(out + array_data)


def _copy_tiles(out, level: _LevelTiles) -> None:
    """The level's tiles in order, each as a 4-byte little-endian size, the tile, and its last 4 bytes again."""
    files = [os.open(path, os.O_RDONLY) for path in level.parts]
    try:
        for part, offset, size in zip(level.part.tolist(), level.offsets.tolist(), level.sizes.tolist()):
            if size == 0:
                continue
            data = os.pread(files[part], size, offset)
            if len(data) != size:
                raise ValueError(f"{level.parts[part]}: tile at byte {offset} is cut short")
            out.write(struct.pack("<I", size))
            out.write(data)
            out.write(data[-4:])
    finally:
        for file in files:
            os.close(file)
