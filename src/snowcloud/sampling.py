"""Patch samplers: which P x P windows of a scene become patches. Seeded, deterministic, memory-bounded.

A window is admissible when at least `min_labelled_fraction` of its pixels are labelled and valid. Window sums
come from integral images built strip by strip (no rejection loop), and draws map ranks among the admissible
windows to positions through per-row counts (no list of all admissible windows). Each scene gets its own
generator from (seed, tile/date), so dates do not share patch positions. Origins come back sorted (row, col).

- random: `patches_per_date` distinct admissible windows, uniformly (thesis: fully labelled windows).
- grid: every admissible window whose corner lies on a `stride` grid from (0, 0).
- class-balanced: `rare_fraction` of the patches among admissible windows holding at least one pixel of a
  `rare_classes` class (when the scene has any), the rest as random.
"""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np

log = logging.getLogger(__name__)

STRIP_ROWS = 1024


class SamplingError(ValueError):
    """A scene from which the configured patches cannot be drawn; the message names the scene and why."""


def scene_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one scene: fixed by the sampler seed and the scene key (e.g. '32TNS/20210720T101559')."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed % 2**64, digest])


def windows_with_at_least(mask: np.ndarray, size: int, count: int, strip_rows: int = STRIP_ROWS) -> np.ndarray:
    """bool (H-size+1, W-size+1): whether the size x size window at each top-left holds >= `count` True pixels."""
    height, width = mask.shape
    out = np.empty((height - size + 1, width - size + 1), dtype=bool)
    for top in range(0, out.shape[0], strip_rows):
        bottom = min(top + strip_rows, out.shape[0])
        sums = window_sums(mask[top : bottom + size - 1], size)
        np.greater_equal(sums, count, out=out[top:bottom])
    return out


def window_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """int32 sums of every size x size window of a 2-D mask (integral image)."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    np.cumsum(mask, axis=0, dtype=np.int32, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
    return integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]


def largest_window_fraction(mask: np.ndarray, size: int, strip_rows: int = STRIP_ROWS) -> float:
    """The largest fraction of True pixels in any size x size window (for error messages)."""
    best = 0
    for top in range(0, mask.shape[0] - size + 1, strip_rows):
        best = max(best, int(window_sums(mask[top : top + strip_rows + size - 1], size).max()))
    return best / size**2


def admissible_windows(good: np.ndarray, size: int, min_fraction: float, source: str) -> np.ndarray:
    """Windows with at least `min_fraction` labelled, valid pixels; an error naming `source` when there is none."""
    height, width = good.shape
    if height < size or width < size:
        raise SamplingError(f"{source}: the scene ({height} x {width}) is smaller than one {size} x {size} patch")
    needed = math.ceil(min_fraction * size**2 - 1e-9)
    admissible = windows_with_at_least(good, size, needed)
    if not admissible.any():
        raise SamplingError(
            f"{source}: no {size} x {size} window has {min_fraction:.0%} labelled, valid pixels (the best has "
            f"{largest_window_fraction(good, size):.1%}; the scene {good.mean():.1%}): lower "
            "sampler.min_labelled_fraction or the patch size, or check the label mask"
        )
    return admissible


def draw_windows(
    admissible: np.ndarray, k: int, rng: np.random.Generator, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Flat indices (row * width + col) of `k` admissible windows drawn uniformly, distinct and not in `exclude`
    when there are enough of them (else with replacement, logged)."""
    if exclude is None:
        exclude = np.empty(0, np.int64)
    row_counts = admissible.sum(axis=1, dtype=np.int64)
    ends = np.cumsum(row_counts)
    total = int(ends[-1])
    if total - len(exclude) >= k:
        ranks = rng.choice(total, size=k + len(exclude), replace=False)
    else:
        log.warning("only %d admissible windows for %d patches: drawing with replacement", total, k)
        ranks = rng.integers(0, total, size=k + len(exclude))
    rows = np.searchsorted(ends, ranks, side="right")
    within = ranks - (ends[rows] - row_counts[rows])
    flat = np.empty(len(ranks), dtype=np.int64)
    for row in np.unique(rows):
        here = rows == row
        flat[here] = row * admissible.shape[1] + np.flatnonzero(admissible[row])[within[here]]
    return flat[~np.isin(flat, exclude)][:k]


def sample_origins(good: np.ndarray, label: np.ndarray, size: int, options: dict, key: str, source: str) -> np.ndarray:
    """Top-left (row, col) int32 (N, 2) of the patches of one scene, sorted.

    `good`: labelled and valid pixels; `label`: classes (255 not labelled); `options`: the `sampler` config;
    `key`: the scene's identity for seeding (tile/date); `source`: the scene's name for errors.
    """
    method = options["method"]
    admissible = admissible_windows(good, size, options["min_labelled_fraction"], source)
    if method == "grid":
        stride = options["stride"] or size
        on_grid = np.zeros_like(admissible)
        on_grid[::stride, ::stride] = True
        flat = np.flatnonzero(admissible & on_grid)
        if flat.size == 0:
            raise SamplingError(f"{source}: no admissible window lies on the stride-{stride} grid")
    else:
        rng = scene_rng(options["seed"], key)
        count = options["patches_per_date"]
        rare = np.empty(0, dtype=np.int64)
        if method == "class-balanced":
            rare = _draw_rare(admissible, label, size, options, count, rng, source)
        elif method != "random":
            raise SamplingError(f"{source}: unknown sampler method '{method}'")
        flat = np.concatenate([rare, draw_windows(admissible, count - len(rare), rng, exclude=rare)])
    flat.sort()
    rows, cols = np.divmod(flat, admissible.shape[1])
    return np.stack([rows, cols], axis=1).astype(np.int32)


def class_mask(label: np.ndarray, classes: list[int]) -> np.ndarray:
    """bool: pixels of a uint8 label in `classes`, by table lookup (np.isin takes about 12 bytes per pixel)."""
    table = np.zeros(256, dtype=bool)
    table[list(classes)] = True
    return table[label]


def _draw_rare(
    admissible: np.ndarray,
    label: np.ndarray,
    size: int,
    options: dict,
    count: int,
    rng: np.random.Generator,
    source: str,
) -> np.ndarray:
    """The class-balanced share: windows holding a rare class, or none when the scene has no such window."""
    n_rare = round(options["rare_fraction"] * count)
    holding_rare = admissible & windows_with_at_least(class_mask(label, options["rare_classes"]), size, 1)
    if not holding_rare.any():
        log.info("%s: no admissible window holds a class of %s", source, options["rare_classes"])
    if n_rare == 0 or not holding_rare.any():
        return np.empty(0, dtype=np.int64)
    available = int(holding_rare.sum())
    if available < n_rare:
        log.info("%s: only %d windows hold a rare class (%d of %d patches wanted)", source, available, n_rare, count)
    return draw_windows(holding_rare, min(n_rare, available), rng)
