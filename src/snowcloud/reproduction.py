"""results/reproduction/{experiment}.md: a trained run beside the numbers the thesis documents for its commit.

The saved model (the best-validation-loss epoch, which `model.pt` holds) is run over the validation patches the
training validated on, in the same fixed order and batch size, for the thesis's number of validation steps plus
the one extra batch its loop processed. On those pixels the page gives the epoch in the thesis's log format
computed with the thesis's metric definitions (`snowcloud.thesis_metrics`: softmax > threshold one-vs-rest,
batch averaging), the documented values of the run where THESIS.md has them, and the project's argmax-confusion
metrics; then the class distribution and class weights of the run's dataset in the thesis's print format beside
the documented ones.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snowcloud import checkpoint, dataset_stats, thesis_metrics
from snowcloud.accelerator import resolve_device
from snowcloud.atomic import atomic_output
from snowcloud.config import validated
from snowcloud.loader import ShardDataset
from snowcloud.metrics import confusion_matrix, metrics_from_confusion, thesis_metric_lines, thesis_metric_name

log = logging.getLogger(__name__)


def validation_batches(
    stats_path: str | Path, batch_size: int, batches: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `batches` validation batches in the training's fixed validation order, read one at a time."""
    dataset = ShardDataset(dataset_stats.load_split(stats_path)["validation"])
    n = min(len(dataset), batches * batch_size)
    for start in range(0, n, batch_size):
        yield dataset.read_batch(range(start, min(start + batch_size, n)))


def evaluate_thesis_way(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    threshold: float,
    steps: int,
    n_classes: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(3, K) thesis metrics averaged the thesis's way, the argmax confusion matrix of the same pixels and the
    number of batches (the model runs on its device, in float32)."""
    per_batch, confusion = [], 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for image, label in batches:
            probabilities = model(image.to(device)).float().softmax(dim=1).cpu().numpy()
            labels = label.numpy()
            per_batch.append(thesis_metrics.batch_metrics(probabilities, labels, threshold))
            confusion = confusion + confusion_matrix(probabilities.argmax(axis=1), labels, n_classes)
    return thesis_metrics.epoch_average(per_batch, steps), np.asarray(confusion), len(per_batch)


def history_row(history_path: str | Path, epoch: int) -> dict[str, str]:
    with open(history_path, newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["epoch"]) == epoch:
                return row
    raise ValueError(f"{history_path}: no row for epoch {epoch}")


def log_format(
    epoch: int, train_loss: float, test_loss: float, metrics: Mapping[str, Any], estop: str, classes: Sequence[str]
) -> list[str]:
    """The thesis's epoch block: the "Epoch: N, train_loss: ..." line and its 3 metric lines per class."""
    head = f"Epoch: {epoch}, train_loss: {train_loss:.6f}, test_loss: {test_loss:.6f}, EStop: {estop}"
    return [head, *thesis_metric_lines(metrics, tuple(classes))]


def distribution_line(values: Sequence[float]) -> str:
    """As the thesis printed it: `Total Class Distribution: [0.41002, 0.29181, 0.29019, 0.00798]`."""
    return "Total Class Distribution: [" + ", ".join("0" if v == 0 else f"{v:.5f}" for v in values) + "]"


def ours_distribution(stats: Mapping[str, Any], documented: Mapping[str, Any]) -> tuple[list[str], list[float]]:
    """The dataset's class names and patch-mean class fractions: of the trained classes, or of every encoded class
    (the ignored ones too, e.g. 4c654a2's fifth, semi-transparent clouds) where the thesis printed as many."""
    fractions = stats["total"]["class_fraction"]
    encoded = stats["encoded_classes"]
    if len(documented.get("class_distribution", [])) == len(encoded) != len(stats["classes"]):
        return list(encoded), list(fractions["encoded patch-mean"])
    return list(stats["classes"]), list(fractions["patch-mean"])


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def metric_table(
    ours: Mapping[str, Any], documented: Mapping[str, float], argmax: Mapping[str, Any], classes: Sequence[str]
) -> list[str]:
    rows = ["| metric | ours, thesis definition | thesis documented | ours, argmax confusion |", "|---|---|---|---|"]
    for key in thesis_metrics.METRICS:
        for cls in classes:
            name = thesis_metric_name(key, cls)
            rows.append(
                f"| `{name}` | {_number(ours[key][cls])} | {_number(documented.get(name))} | "
                f"{_number(argmax[key][cls])} |"
            )
    return rows


def write_reproduction(
    model_path: str | Path,
    history_path: str | Path,
    stats_path: str | Path,
    output: str | Path,
    experiment: str,
    options: Mapping[str, Any],
    threads: int = 1,
) -> None:
    """The reproduction page of one experiment (options: its `experiments.<name>` section with `thesis` set)."""
    options = validated(options, "experiment")
    if not options["thesis"]:
        raise ValueError(f"experiments.{experiment}.thesis is not set: there is no thesis run to compare with")
    torch.set_num_threads(max(1, threads))
    thesis, training = options["thesis"], options["training"]
    device = resolve_device(str(training["device"]), f"experiments.{experiment}.training.device")
    model, metadata = checkpoint.load_model(model_path, device)
    stats = dataset_stats.load_stats(stats_path)
    batch_size = int(training["batch_size"])
    n_validation = stats["split"]["patches"]["validation"]
    steps = thesis["validation_steps"] or training["validation_steps"] or math.ceil(n_validation / batch_size)
    steps = min(steps, math.ceil(n_validation / batch_size))
    batches = validation_batches(stats_path, batch_size, steps + 1)
    classes = tuple(stats["classes"])
    values, confusion, n_batches = evaluate_thesis_way(model, batches, thesis["threshold"], steps, len(classes))
    ours = thesis_metrics.as_metrics(values, classes)
    argmax = metrics_from_confusion(confusion, classes)
    epoch = int(metadata["best_epoch"])
    row = history_row(history_path, epoch)
    documented = thesis["documented"]
    patience = training["early_stopping"]["patience"]
    ours_log = log_format(
        epoch,
        float(row["train_loss"]),
        float(row["val_loss"]),
        ours,
        f"{row['early_stopping_counter']}/{patience}",
        classes,
    )
    distribution = ours_distribution(stats, documented)
    pixels = min(n_validation, n_batches * batch_size) * int(stats["patch_size"]) ** 2

    lines = [
        f"# Thesis run {thesis['commit']}: experiment `{experiment}`",
        "",
        f"Model `{model_path}`: epoch {epoch} of {metadata['epochs_trained']} (the best validation loss, the "
        f"weights `model.pt` holds). Validation: {n_batches} batch(es) of up to {batch_size} patches ({pixels} "
        f"pixels) in the training's fixed order: {steps} step(s) plus, where the set has it, the one extra batch "
        f"the thesis's loop processed; sums divided by {steps}. Thesis metrics: softmax > THRESHOLD {thesis['threshold']} per class, one "
        "against the rest, every pixel of a batch (unlabelled pixels are negatives of every class). Losses are "
        "those of history.csv (ours: labelled pixels only, mean over patches).",
        "",
        "## The epoch in the thesis's log format",
        "",
        "Ours (thesis metric definitions):",
        "",
        "```",
        *ours_log,
        "```",
        "",
    ]
    if documented.get("epoch") or documented.get("metrics") or documented.get("test_loss") is not None:
        lines += [f"Documented by the thesis (epoch {documented.get('epoch', 'not given')}):", "", "```"]
        if documented.get("train_loss") is not None:
            lines.append(
                f"Epoch: {documented.get('epoch', '?')}, train_loss: {documented['train_loss']:.6f}, "
                f"test_loss: {documented['test_loss']:.6f}"
            )
        elif documented.get("test_loss") is not None:
            lines.append(f"test_loss: {documented['test_loss']} (no train_loss documented)")
        lines += [f"- {name}: {value:.4f}" for name, value in documented.get("metrics", {}).items()]
        lines += ["```", ""]
    else:
        lines += ["The thesis documents no epoch results for this run.", ""]
    lines += [*metric_table(ours, documented.get("metrics", {}), argmax, classes), ""]
    lines += [
        f"Argmax confusion on the same pixels (labelled pixels only): macro IoU {_number(argmax['macro_iou'])}, "
        f"pixel accuracy {_number(argmax['pixel_accuracy'])}.",
        "",
        "## Class distribution and class weights",
        "",
        f"Classes, in the order printed: {', '.join(distribution[0])} (the dataset's class set: "
        f"{', '.join(classes)} trained).",
        "",
        "```",
        f"ours:       {distribution_line(distribution[1])}",
    ]
    if documented.get("class_distribution"):
        lines.append(f"documented: {distribution_line(documented['class_distribution'])}")
    else:
        lines.append("documented: (no distribution printed by this run is documented)")
    weights = stats["class_weights"]
    lines.append(
        f"ours:       class weights ({weights['formula']} of {weights['fraction']}): "
        f"[{', '.join(f'{w:.5g}' for w in weights['values'])}]"
    )
    if documented.get("class_weights"):
        lines.append(
            f"documented: CLASS_WEIGHTS {documented.get('weight_fractions')} -> pos_weight "
            f"[{', '.join(f'{w:.5g}' for w in documented['class_weights'])}]"
        )
    lines += ["```", ""]
    if documented.get("note"):
        lines += [f"Note on the documented numbers: {documented['note'].strip()}", ""]
    with atomic_output(output) as tmp:
        Path(tmp).write_text("\n".join(lines))
    log.info("wrote %s", output)
