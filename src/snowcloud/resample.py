"""Upsampling of the 20 m and 60 m bands onto the 10 m grid: pixel-centre aligned, integer factors, separable.

Output pixel j (10 m) lies at native coordinate s = (j + 0.5) / k - 0.5, so every output phase p = j mod k
has one fixed set of taps (offsets from native pixel j // k) and weights. Kernels: nearest (the native pixel
the output pixel lies in), bilinear (triangle), cubic (cubic convolution with parameter a: -0.5 is Keys and
GDAL's cubic, -0.75 OpenCV's INTER_CUBIC). Beyond the raster's edge the border pixel is replicated.

No-data (invalid native pixels, DN 0) never leaks into valid values: an output pixel's value is computed from
the valid taps only, with their weights renormalised to sum to 1; where the valid taps carry less than
MIN_VALID_WEIGHT of the kernel (possible only right beside no-data), it takes the value of the native pixel it
lies in. Which output pixels are valid is decided by the caller (the native pixel they lie in, i.e. nearest).

The work arrays are reused from call to call in a `Scratch` of the calling thread (a fresh full-width array
costs more in page faults than the arithmetic done on it), and a strip is upsampled a few rows at a time, so
they stay a few MB each and mostly in the CPU's cache.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

METHODS = ("nearest", "bilinear", "cubic")
MARGIN = 2  # native pixels of context needed on each side by every kernel (cubic reaches 2)
MIN_VALID_WEIGHT = 0.5
RESULT = "result"  # the Scratch array of upsample's output rows: callers reuse it for their other float32 rows
# 10 m rows of a strip computed at once in float32 (a multiple of 6): work arrays of a few MB that stay in the
# CPU's cache, instead of ~135 MB per thread for a full 1026-row strip of a full tile
ROWS_AT_ONCE = 192

Taps = list[list[tuple[int, float]]]


class Scratch:
    """Named work arrays reused from call to call (grown when a call needs more)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        size = math.prod(shape)
        flat = self._arrays.get(name)
        if flat is None or flat.size < size or flat.dtype != dtype:
            flat = self._arrays[name] = np.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)


_local = threading.local()


def thread_scratch() -> Scratch:
    """The calling thread's own Scratch (so parallel threads never share work arrays)."""
    if not hasattr(_local, "scratch"):
        _local.scratch = Scratch()
    return _local.scratch


def cubic_weight(x: float, a: float) -> float:
    """The cubic convolution kernel W(x) with free parameter a (Keys 1981)."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * (x**3 - 5 * x**2 + 8 * x - 4)
    return 0.0


def phase_taps(factor: int, method: str, cubic_a: float = -0.5) -> Taps:
    """For each output phase p = 0..factor-1: (offset from the native pixel j // factor, weight) pairs."""
    if method not in METHODS:
        raise ValueError(f"resampling {method!r} is not one of {METHODS}")
    taps = []
    for phase in range(factor):
        position = (phase + 0.5) / factor - 0.5  # relative to the centre of the native pixel j // factor
        base = math.floor(position)
        fraction = position - base
        if method == "nearest":
            pairs = [(0, 1.0)]
        elif method == "bilinear":
            pairs = [(base, 1 - fraction), (base + 1, fraction)]
        else:
            pairs = [(base + i, cubic_weight(fraction - i, cubic_a)) for i in (-1, 0, 1, 2)]
        taps.append([(offset, weight) for offset, weight in pairs if weight != 0])
    return taps


def gain(taps: Taps) -> float:
    """The largest |output| of `upsample` per unit of the largest |native value| (the renormalised kernel
    divides by at least MIN_VALID_WEIGHT when it has negative weights; without, every output pixel is a
    weighted mean of native values)."""
    one_axis = max(sum(abs(weight) for _, weight in pairs) for pairs in taps)
    negative = any(weight < 0 for pairs in taps for _, weight in pairs)
    return one_axis**2 / (MIN_VALID_WEIGHT if negative else 1.0)


def upsample_axis(
    values: np.ndarray, factor: int, taps: Taps, axis: int, out: np.ndarray, work: np.ndarray
) -> np.ndarray:
    """Upsample 2-D float32 `values` along `axis` into `out`, where `values` hold MARGIN extra native pixels at
    both ends of that axis: n + 2 * MARGIN native pixels give n * factor output pixels. `work` has the shape of
    one output phase (n along `axis`)."""
    n = values.shape[axis] - 2 * MARGIN

    def along(array: np.ndarray, part: slice) -> np.ndarray:
        return array[part] if axis == 0 else array[:, part]

    for phase, pairs in enumerate(taps):
        destination = along(out, slice(phase, None, factor))
        for index, (offset, weight) in enumerate(pairs):
            window = along(values, slice(MARGIN + offset, MARGIN + offset + n))
            if index == 0:
                np.multiply(window, np.float32(weight), out=destination)
            else:
                np.multiply(window, np.float32(weight), out=work)
                destination += work
    return out


def upsample(
    values: np.ndarray,
    factor: int,
    taps: Taps,
    valid: np.ndarray | None,
    rows_at_once: int,
    store: Callable[[int, np.ndarray], None],
) -> None:
    """Upsample a float32 native window with MARGIN extra pixels on all four sides to (rows * k, cols * k),
    computing each output pixel from valid input only (see the module docstring); `valid` (same shape as
    `values`) None means all valid. The output comes `rows_at_once` native rows at a time, as
    `store(first output row, rows)`; those rows live in the thread's Scratch until the next chunk.

    The plain kernel runs everywhere; the columns whose kernel reaches invalid input (a swath edge crosses a
    strip in a narrow band of columns, found once for the whole window) are then recomputed with the
    renormalised kernel, run by run. Every output pixel is computed alike whatever the chunks.
    """
    scratch = thread_scratch()
    runs = [] if valid is None or valid.all() else _runs(_columns_to_fix(valid))
    inner = values.shape[0] - 2 * MARGIN
    for first in range(0, inner, rows_at_once):
        rows = slice(first, min(first + rows_at_once, inner) + 2 * MARGIN)
        out = _separable(values[rows], factor, taps, scratch)
        for start, stop in runs:
            columns = slice(start, stop + 2 * MARGIN)  # native columns, margins included
            out[:, start * factor : stop * factor] = _renormalised(
                values[rows, columns], valid[rows, columns], factor, taps
            )
        store(first * factor, out)


def _separable(array: np.ndarray, factor: int, taps: Taps, scratch: Scratch) -> np.ndarray:
    rows, cols = (size - 2 * MARGIN for size in array.shape)
    wide = scratch.array("wide", (rows + 2 * MARGIN, cols * factor))
    upsample_axis(array, factor, taps, 1, wide, scratch.array("work_wide", (rows + 2 * MARGIN, cols)))
    out = scratch.array(RESULT, (rows * factor, cols * factor))
    return upsample_axis(wide, factor, taps, 0, out, scratch.array("work_upsampled", (rows, cols * factor)))


def _renormalised(values: np.ndarray, valid: np.ndarray, factor: int, taps: Taps) -> np.ndarray:
    """The kernel over valid taps only, weights renormalised; nearest where they carry too little weight."""
    weighted = _separable(np.where(valid, values, 0).astype(np.float32), factor, taps, Scratch())
    weight = _separable(valid.astype(np.float32), factor, taps, Scratch())
    inner = values[MARGIN:-MARGIN, MARGIN:-MARGIN].astype(np.float32)
    nearest = np.repeat(np.repeat(inner, factor, axis=0), factor, axis=1)
    enough = weight >= MIN_VALID_WEIGHT
    np.divide(weighted, weight, out=weighted, where=enough)
    return np.where(enough, weighted, nearest)


def _columns_to_fix(valid: np.ndarray) -> np.ndarray:
    """For each inner native column: does its kernel (MARGIN columns either side, all rows) hold both valid
    and invalid pixels? Columns with only invalid input give no-data pixels anyway."""
    reach = 2 * MARGIN + 1
    any_invalid = np.convolve((~valid).any(axis=0), np.ones(reach), mode="valid") > 0
    any_valid = np.convolve(valid.any(axis=0), np.ones(reach), mode="valid") > 0
    return any_invalid & any_valid


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def replicate_edges(values: np.ndarray, before: int, after: int, margin: int) -> None:
    """Fill, in place, the border of a window read at the raster's edge: the first `before` and last `after`
    rows from the nearest row read, then `margin` columns on both sides from the nearest column."""
    rows = values.shape[0]
    if before:
        values[:before] = values[before]
    if after:
        values[rows - after :] = values[rows - after - 1]
    if margin:
        values[:, :margin] = values[:, margin : margin + 1]
        values[:, -margin:] = values[:, -margin - 1 : -margin]
