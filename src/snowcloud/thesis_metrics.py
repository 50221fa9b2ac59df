"""The thesis's epoch metrics (THESIS.md section 7), computed its way, to compare a run with its documented numbers.

Per batch and class c, over all B·H·W pixels of the batch: ``p = softmax_c > threshold`` (one-vs-rest, so a
pixel can be positive for several classes or for none: the "threshold quirk"), ``y = (label == c)`` (pixels
that are no class, 255, are negatives of every class, as the thesis's all-zero targets were):

- pixel accuracy ``mean(p == y)``,
- "union_over_inter" (IoU) ``Σp·y / (Σp + Σy − Σp·y)`` (no epsilon: 0/0 is NaN and makes the mean NaN),
- Dice ``2Σp·y / (Σp + Σy)``.

The epoch value is the sum over batches divided by the number of steps; the thesis's loop processed one batch
more than it divided by (n + 1 over n, :func:`epoch_average`). Argmax-confusion metrics
(`snowcloud.metrics`) are the project's own; both are reported side by side by `snowcloud.reproduction`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from snowcloud.metrics import THESIS_METRIC_PREFIXES

METRICS = tuple(THESIS_METRIC_PREFIXES)  # class_accuracy, iou, f1: pixel accuracy, IoU, Dice


def batch_metrics(probabilities: np.ndarray, label: np.ndarray, threshold: float) -> np.ndarray:
    """(3, K) pixel accuracy, IoU and Dice of one batch: probabilities (B, K, H, W), label (B, H, W)."""
    n_classes = probabilities.shape[1]
    positive = probabilities > threshold
    target = label[:, None] == np.arange(n_classes).reshape(1, n_classes, 1, 1)
    axes = (0, 2, 3)
    both = np.logical_and(positive, target).sum(axis=axes, dtype=np.float64)
    predicted = positive.sum(axis=axes, dtype=np.float64)
    actual = target.sum(axis=axes, dtype=np.float64)
    pixels = label.size
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = (pixels - (predicted + actual - 2 * both)) / pixels
        iou = both / (predicted + actual - both)
        dice = 2 * both / (predicted + actual)
    return np.stack([accuracy, iou, dice])


def epoch_average(per_batch: Sequence[np.ndarray], steps: int) -> np.ndarray:
    """The thesis's epoch value: the sum over the batches it processed (up to steps + 1) divided by `steps`."""
    if steps < 1 or not per_batch:
        raise ValueError("thesis metrics need at least one step and one batch")
    return np.sum(per_batch[: steps + 1], axis=0) / steps


def as_metrics(values: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """(3, K) values -> {"class_accuracy": {cls: v}, "iou": ..., "f1": ...} (None for NaN), the shape that
    `metrics.thesis_metric_lines` prints in the thesis's log format."""
    return {
        key: {name: None if np.isnan(v) else float(v) for name, v in zip(class_names, row)}
        for key, row in zip(METRICS, values)
    }
