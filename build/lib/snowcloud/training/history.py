"""Per-epoch history rows, the thesis-format log lines, `history.csv` and the curves PNG."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from snowcloud.atomic import atomic_output
from snowcloud.metrics import thesis_metric_lines

# Columns that measure the machine, not the run: they differ between an interrupted and an uninterrupted run.
TIMING_COLUMNS = ("seconds", "patches_per_s")


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """`{"iou": {"snow": x}, "macro_iou": y}` -> `{"iou_snow": x, "macro_iou": y}`."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}_{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def history_row(
    epoch: int,
    lr: float,
    train_loss: float,
    val_loss: float,
    metrics: Mapping[str, Any],
    early_stopping_counter: int,
    seconds: float,
    patches_per_s: float,
) -> dict[str, Any]:
    """One epoch: learning rate, losses, every validation metric, early-stopping counter, timing."""
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train_loss,
        "val_loss": val_loss,
        **flatten_metrics(metrics),
        "early_stopping_counter": early_stopping_counter,
        "seconds": seconds,
        "patches_per_s": patches_per_s,
    }


def epoch_log_lines(row: Mapping[str, Any], metrics: Mapping[str, Any], patience: int) -> list[str]:
    """The thesis's lines ("Epoch: N, train_loss: …, test_loss: …, EStop: k/patience" and the 12 metric
    lines), then one line of our own."""
    return [
        f"Epoch: {row['epoch']}, train_loss: {row['train_loss']:.6f}, test_loss: {row['val_loss']:.6f}, "
        f"EStop: {row['early_stopping_counter']}/{patience}",
        *thesis_metric_lines(metrics),
        f"lr {row['lr']:.3g}, macro IoU {_format(row.get('macro_iou'))}, micro IoU {_format(row.get('micro_iou'))}, "
        f"pixel accuracy {_format(row.get('pixel_accuracy'))}, {row['seconds']:.1f} s, "
        f"{row['patches_per_s']:.1f} training patches/s",
    ]


def _format(value: float | None) -> str:
    return "nan" if value is None else f"{value:.4f}"


def write_history(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """One row per epoch; an undefined metric (class absent) is an empty cell."""
    columns = list(rows[0]) if rows else ["epoch"]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(
    rows: Sequence[Mapping[str, Any]], path: str | Path, class_names: Sequence[str], best_epoch: int | None
) -> None:
    """Loss (log scale), per-class IoU and per-class F1 against the epoch, the best epoch marked."""
    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(16, 4.5), layout="constrained")
    axes = figure.subplots(1, 3)
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        axes[0].plot(epochs, [row[key] for row in rows], marker=".", label=label)
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    for axis, metric in zip(axes[1:], ("iou", "f1"), strict=True):
        for name in class_names:
            axis.plot(epochs, [_nan_if_none(row.get(f"{metric}_{name}")) for row in rows], marker=".", label=name)
        axis.plot(epochs, [_nan_if_none(row.get(f"macro_{metric}")) for row in rows], "k--", label="macro mean")
        axis.set_title(f"validation {'IoU' if metric == 'iou' else 'F1 (Dice)'}")
        axis.set_ylim(0, 1.02)
    for axis in axes:
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value
