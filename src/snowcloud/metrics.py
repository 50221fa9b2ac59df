"""Segmentation metrics from a confusion matrix of argmax predictions over valid pixels."""

from __future__ import annotations

import numpy as np

from snowcloud.labels import IGNORE_INDEX


def confusion_matrix(
    prediction: np.ndarray, target: np.ndarray, n_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Counts[t, p] of pixels with target class t predicted as p; pixels whose target (or prediction) is
    `ignore_index` or outside 0..n_classes-1 are left out."""
    target = np.asarray(target).ravel()
    prediction = np.asarray(prediction).ravel()
    keep = (target != ignore_index) & (prediction != ignore_index) & (target < n_classes) & (prediction < n_classes)
    pairs = target[keep].astype(np.int64) * n_classes + prediction[keep].astype(np.int64)
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (a class absent from both maps)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def metrics_from_confusion(
    confusion: np.ndarray, class_names: tuple[str, ...], compared: tuple[str, ...] | None = None
) -> dict[str, object]:
    """Per-class IoU, F1 (Dice), precision, recall and binary accuracy; pixel accuracy; macro and micro means.

    Rows of `confusion` are the target class, columns the prediction. A class that neither occurs nor is
    predicted has NaN scores and is left out of the macro means; so has a class not in `compared` (when given:
    a class only the labels or only the prediction has, which cannot be compared).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    false_positive = predicted - true_positive
    false_negative = actual - true_positive
    total = confusion.sum()

    per_class = {
        "iou": _ratio(true_positive, true_positive + false_positive + false_negative),
        "f1": _ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative),
        "precision": _ratio(true_positive, predicted),
        "recall": _ratio(true_positive, actual),
        # The thesis's per-class "pixel accuracy": agreement of the binary map of one class, (TP + TN) / all.
        "class_accuracy": _ratio(total - false_positive - false_negative, np.full_like(true_positive, total)),
    }
    if compared is not None:
        left_out = np.array([name not in compared for name in class_names])
        for values in per_class.values():
            values[left_out] = np.nan
    micro_iou = _ratio(true_positive.sum(), (true_positive + false_positive + false_negative).sum())
    result: dict[str, object] = {
        "pixels": int(total),
        "pixel_accuracy": float(_ratio(true_positive.sum(), total)),
        "micro_iou": float(micro_iou),
        # With one label per pixel, micro precision, recall and F1 all equal the pixel accuracy.
        "micro_f1": float(_ratio(true_positive.sum(), total)),
    }
    for name, values in per_class.items():
        result[name] = {cls: _none_if_nan(v) for cls, v in zip(class_names, values)}
        result[f"macro_{name}"] = _none_if_nan(np.nanmean(values) if np.isfinite(values).any() else np.nan)
    return result


def _none_if_nan(value: float) -> float | None:
    """JSON has no NaN: an undefined score is None."""
    value = float(value)
    return None if np.isnan(value) else value


def thesis_metric_lines(metrics: dict[str, object], class_names: tuple[str, ...] | None = None) -> list[str]:
    """Metric lines in the thesis log format ("- union_over_inter_snow: 0.9424"), for side-by-side reading.

    `class_names` defaults to the classes of `metrics`, in their order. The thesis names classes background,
    snow, clouds, water; its values came from thresholded softmax maps
    averaged over batches, ours from the argmax confusion matrix, so small differences are expected.
    """
    lines = []
    for key in THESIS_METRIC_PREFIXES:
        for cls in class_names or tuple(metrics[key]):  # type: ignore[call-overload]
            value = metrics[key][cls]
            lines.append(f"- {thesis_metric_name(key, cls)}: {'nan' if value is None else f'{value:.4f}'}")
    return lines


# The thesis's names: metric prefix per key of `metrics_from_confusion`, and class names.
THESIS_METRIC_PREFIXES = {"class_accuracy": "pixel_accuracy___", "iou": "union_over_inter_", "f1": "dice_coefficient_"}
THESIS_CLASS_NAMES = {"background": "background", "snow": "snow", "cloud": "clouds", "water": "water"}


def thesis_metric_name(key: str, cls: str) -> str:
    """("iou", "cloud") -> "union_over_inter_clouds", as the thesis's log names it."""
    return f"{THESIS_METRIC_PREFIXES[key]}{THESIS_CLASS_NAMES.get(cls, cls)}"
