"""Counting values of large integer arrays without large temporaries."""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 20  # values counted at once: np.bincount first copies what it counts to int64 (8 bytes per value)


def bincount_in_chunks(values: np.ndarray, minlength: int, chunk: int = CHUNK) -> np.ndarray:
    """np.bincount(values.ravel(), minlength=minlength) for non-negative integers, counted `chunk` values at a
    time, so a 10980 x 10980 band costs a few MB beside it instead of 1 GB."""
    counts = np.zeros(minlength, dtype=np.int64)
    flat = values.reshape(-1)
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start : start + chunk], minlength=minlength)
    return counts
