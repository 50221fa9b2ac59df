"""Window geometry of full-scene prediction (pure numpy): where the windows of a scene start along each axis, how
large they are and how each window's pixels are weighted, for the two schemes.

`margin` (the default): as few large windows as cover the scene when each keeps only its core, the part away from
its zero-padded edges; every pixel is taken from exactly one window. `blend`: windows of the model's patch size
at an overlap, blended with weights normalised by their sum (the thesis's scheme).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The U-Net halves the grid four times: window sides that are multiples of 16 keep every level aligned, so a
# window's result does not depend on padding inside the network.
WINDOW_MULTIPLE = 16


def window_stride(patch_size: int, overlap: float) -> int:
    """Stride between window starts: P * (1 - overlap), at least one pixel."""
    return max(1, round(patch_size * (1 - overlap)))


def window_starts(length: int, patch_size: int, stride: int) -> list[int]:
    """Window start offsets covering every pixel of 0..length-1.

    The last window is shifted back inside so that it ends on the border (the thesis stopped short and left
    strips unpredicted); an axis shorter than the patch gets one window at 0, padded for the model.
    """
    if length <= patch_size:
        return [0]
    starts = list(range(0, length - patch_size + 1, stride))
    if starts[-1] != length - patch_size:
        starts.append(length - patch_size)
    return starts


def blending_profile(size: int, shape: str = "sine") -> np.ndarray:
    """1-D blending weights sampled at pixel centres, 1 in the centre and > 0 up to the edges (so every covered
    pixel has a positive summed weight): `sine` sin(pi (i + 0.5) / P), or `tent` 1 - |2 (i + 0.5) / P - 1| (the
    thesis's "gaussian_smoother", which was 0 on the edge pixels themselves)."""
    u = (np.arange(size) + 0.5) / size
    profile = np.sin(np.pi * u) if shape == "sine" else 1 - np.abs(2 * u - 1)
    return profile.astype(np.float32)


@dataclass(frozen=True)
class AxisPlan:
    """The windows along one axis: their starts, their common size (the network's input side; larger than the
    axis only for an axis shorter than one window, padded) and each window's 1-D weights over its size."""

    starts: list[int]
    size: int
    weights: list[np.ndarray]

    def work(self, length: int) -> float:
        """Pixels the network computes along this axis per pixel of the axis."""
        return len(self.starts) * self.size / length

    def cores(self) -> list[tuple[int, int]] | None:
        """Each window's core, the (first, last) offsets of its one run of weights 1 among weights 0, where every
        window has one and the cores follow each other without overlap (the margin scheme: a pixel's blended value
        is its core's window's own); None for weights that blend."""
        cores = []
        for weights in self.weights:
            ones = np.flatnonzero(weights)
            if len(ones) == 0 or ones[-1] - ones[0] + 1 != len(ones) or not np.all(weights[ones] == 1):
                return None
            cores.append((int(ones[0]), int(ones[-1]) + 1))
        spans = [(start + first, start + last) for start, (first, last) in zip(self.starts, cores)]
        return cores if all(end == begin for (_, end), (begin, _) in zip(spans, spans[1:])) else None


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def blend_axis(length: int, patch_size: int, overlap: float, shape: str) -> AxisPlan:
    """Windows of the model's patch size at `overlap`, each weighted by the blending profile."""
    starts = window_starts(length, patch_size, window_stride(patch_size, overlap))
    return AxisPlan(starts, patch_size, [blending_profile(patch_size, shape)] * len(starts))


def margin_axis(length: int, window: int, margin: int) -> AxisPlan:
    """As few windows of at most `window` pixels as cover the axis when each keeps only its core, the part at
    least `margin` pixels from its edges (at the scene's borders the window's own edge counts, nothing is
    lost); cores split the axis evenly, the window size is the largest core plus both margins rounded up to a
    multiple of WINDOW_MULTIPLE (an axis that fits into one window is one window of its own length). Each
    window's weights are 1 on its core and 0 elsewhere: every pixel is taken from exactly one window, away from
    that window's zero-padded edges."""
    count = max(1, -(-length // max(1, window - 2 * margin)))
    size = round_up(-(-length // count) + 2 * margin, WINDOW_MULTIPLE)
    if size >= length:  # one window of exactly the axis: zeros fed beyond the scene would change its border
        return AxisPlan([0], length, [np.ones(length, np.float32)])
    bounds = [i * length // count for i in range(count + 1)]
    starts, weights = [], []
    for first, last in zip(bounds, bounds[1:]):
        start = min(max(first - margin, 0), length - size)
        core = np.zeros(size, np.float32)
        core[first - start : last - start] = 1.0
        starts.append(start)
        weights.append(core)
    return AxisPlan(starts, size, weights)


def window_count(height: int, width: int, patch_size: int, options: dict) -> int:
    """Windows that cover a height x width scene under the scheme of `options` (before skipping those without a
    valid pixel)."""
    rows, cols = axis_plans(height, width, patch_size, options)
    return len(rows.starts) * len(cols.starts)


def axis_plans(height: int, width: int, patch_size: int, options: dict) -> tuple[AxisPlan, AxisPlan]:
    """Row and column windows of the scheme in `options` (`scheme`: margin or blend)."""
    if options["scheme"] == "margin":
        return (
            margin_axis(height, options["window"], options["margin"]),
            margin_axis(width, options["window"], options["margin"]),
        )
    return (
        blend_axis(height, patch_size, options["overlap"], options["blending"]),
        blend_axis(width, patch_size, options["overlap"], options["blending"]),
    )


def scheme_description(options: dict) -> dict:
    """The window scheme's settings (for logs and provenance tags)."""
    if options["scheme"] == "margin":
        return {"scheme": "margin", "window": options["window"], "margin": options["margin"]}
    return {"scheme": "blend", "overlap": options["overlap"], "blending": f"{options['blending']}, normalised"}
