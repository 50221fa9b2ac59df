"""Predictions against label masks: per-date confusion matrices and metrics for the model and the baselines on
the same pixels, and the summary over dates (CSV and confusion-matrix plot)."""

from __future__ import annotations

import contextlib
import csv
import html
import json
import logging
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.windows import Window

import snowcloud
from snowcloud import dataset_stats, labels
from snowcloud.atomic import atomic_output
from snowcloud.baselines import BASELINE_CLASSES, BASELINES, StripRows
from snowcloud.config import validated
from snowcloud.labels import CLASSES, IGNORE_INDEX, ClassSet
from snowcloud.mask import read_classes
from snowcloud.metrics import confusion_matrix, metrics_from_confusion, thesis_metric_lines
from snowcloud.scene import check_same_grid, identity, row_strips

log = logging.getLogger(__name__)

MODEL = "model"
BLOCK_ROWS = 1024  # rows read at once; bounds memory on full tiles


class EvaluationError(ValueError):
    """Inputs that cannot be compared; the message names the files."""


# ----------------------------------------------------------------------------------------------- per date


def check_margin(shape: tuple[int, int], margin: int, scene: str | Path) -> None:
    """Raise if the margin leaves no pixel of the scene."""
    if 2 * margin >= min(shape):
        raise EvaluationError(
            f"evaluation.margin_pixels = {margin} leaves no pixel of the {shape[0]} x {shape[1]} scene {scene}"
        )


def inside_margin(window: Window, shape: tuple[int, int], margin: int) -> np.ndarray:
    """True for the pixels of a window that are at least `margin` pixels from every border of the scene."""
    rows = np.arange(window.row_off, window.row_off + window.height)
    cols = np.arange(window.col_off, window.col_off + window.width)
    rows_inside = (rows >= margin) & (rows < shape[0] - margin)
    cols_inside = (cols >= margin) & (cols < shape[1] - margin)
    return rows_inside[:, None] & cols_inside[None, :]


def evaluate_scene(
    prediction: str,
    label: str,
    scene: str,
    output: str,
    options: dict,
    threads: int = 1,
    class_set: dict | None = None,
) -> None:
    """Confusion matrices and metrics of the prediction and of each baseline against the label mask, on the
    pixels that are labelled, predicted and at least `margin_pixels` from the border; written as JSON.

    The label is read with `class_set` (a dataset's classes and ignored_classes; the default when None). The
    prediction's classes (its mask's `classes` tag) and the baselines' (the default classes) are matched to the
    label's by name; a class only one side has is counted in the matrices but has no scores ("not_compared")."""
    options = validated(options, "evaluation")
    tile, date = identity(scene)
    methods = [MODEL, *options["baselines"]]
    truth_set = ClassSet.from_options(class_set, "the experiment's dataset")
    counts = {"total": 0, "labelled": 0, "predicted": 0, "margin_excluded": 0, "evaluated": 0}
    with contextlib.ExitStack() as stack:
        scene_ds, prediction_ds = (stack.enter_context(rasterio.open(path)) for path in (scene, prediction))
        check_same_grid(prediction_ds, scene_ds)
        check_margin(scene_ds.shape, options["margin_pixels"], scene)
        model_tags = prediction_ds.tags()
        names = {method: list(BASELINE_CLASSES) for method in methods}
        names[MODEL] = read_classes(model_tags, str(prediction))
        classes = list(truth_set.names)
        classes += [name for method in methods for name in names[method] if name not in classes]
        lookups = {method: by_name(names[method], classes) for method in methods}
        n_classes = len(classes)
        confusions = {method: np.zeros((n_classes, n_classes), np.int64) for method in methods}
        baselines = {
            name: StripRows(stack.enter_context(contextlib.closing(BASELINES[name](scene, options, threads))))
            for name in options["baselines"]
        }
        for window in row_strips(scene_ds.height, scene_ds.width, BLOCK_ROWS):
            inside = inside_margin(window, scene_ds.shape, options["margin_pixels"])
            predicted = prediction_ds.read(1, window=window)
            truth = labels.read_label(label, scene, window, class_set=truth_set)
            labelled, has_prediction = truth != IGNORE_INDEX, predicted != IGNORE_INDEX
            evaluated = labelled & has_prediction & inside
            counts["total"] += truth.size
            counts["labelled"] += int(labelled.sum())
            counts["predicted"] += int(has_prediction.sum())
            counts["margin_excluded"] += int((labelled & has_prediction & ~inside).sum())
            counts["evaluated"] += int(evaluated.sum())
            confusions[MODEL] += confusion_matrix(lookups[MODEL][predicted[evaluated]], truth[evaluated], n_classes)
            for name, rows in baselines.items():
                guess = rows.take(window.height)
                if (guess[evaluated] == IGNORE_INDEX).any():
                    raise EvaluationError(
                        f"prediction {prediction} has classes where scene {scene} has no data: they are not from "
                        "the same scene (rerun inference)"
                    )
                confusions[name] += confusion_matrix(lookups[name][guess[evaluated]], truth[evaluated], n_classes)
    if counts["evaluated"] == 0:
        log.warning(
            "%s %s: no pixel is labelled, predicted and inside the margin; all metrics are undefined", tile, date
        )
    result = {
        "tile": tile,
        "date": date,
        "inputs": {"prediction": str(prediction), "label": str(label), "scene": str(scene)},
        "model": {key: model_tags[key] for key in ("experiment", "model_path", "model_sha256") if key in model_tags},
        "margin_pixels": options["margin_pixels"],
        "classes": classes,
        "pixels": counts,
        "methods": {
            method: method_result(confusions[method], classes, compared(truth_set.names, names[method]))
            for method in methods
        },
        "baseline_options": {name: options[name] for name in BASELINES},
        "snowcloud_version": snowcloud.__version__,
    }
    with atomic_output(output) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    model_metrics = result["methods"][MODEL]["metrics"]
    log.info(
        "%s %s: %d pixels evaluated, model macro IoU %s", tile, date, counts["evaluated"], model_metrics["macro_iou"]
    )


def by_name(names: list[str], classes: list[str]) -> np.ndarray:
    """uint8 (256,): mask value of a map with classes `names` -> index of that class in `classes`; 255 kept."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[: len(names)] = [classes.index(name) for name in names]
    return table


def compared(truth: tuple[str, ...] | list[str], predicted: list[str]) -> list[str]:
    """The classes both the labels and a prediction have: the ones with scores."""
    return [name for name in truth if name in predicted]


def method_result(confusion: np.ndarray, classes: list[str], compared: list[str]) -> dict[str, object]:
    """Confusion matrix (rows: label, columns: prediction), its metrics, the thesis-format lines and the classes
    compared (the others have no scores: only the labels or only the prediction have them)."""
    metrics = metrics_from_confusion(confusion, tuple(classes), tuple(compared))
    return {
        "confusion": confusion.tolist(),
        "metrics": metrics,
        "compared": compared,
        "not_compared": [name for name in classes if name not in compared],
        "thesis_lines": thesis_metric_lines(metrics, tuple(classes)),
    }


# ----------------------------------------------------------------------------------------------- summary

# unknown: the dates of an inference-only experiment, whose model's training split is not known here
SPLIT_ORDER = ("train", "validation", "mixed", "unused", "unknown")
METRIC_COLUMNS = ("pixel_accuracy", "micro_iou", "macro_iou", "macro_f1", "macro_precision", "macro_recall")
PER_CLASS_METRICS = ("iou", "f1", "precision", "recall")


def load_evaluations(paths: list[str]) -> list[dict]:
    """The per-date evaluation JSONs, checked to share classes and methods."""
    evaluations = []
    for path in paths:
        evaluation = json.loads(Path(path).read_text())
        if evaluations and (evaluation["classes"], list(evaluation["methods"])) != (
            evaluations[0]["classes"],
            list(evaluations[0]["methods"]),
        ):
            raise EvaluationError(
                f"{path} has classes {evaluation['classes']} and methods {list(evaluation['methods'])}, but "
                f"{paths[0]} has {evaluations[0]['classes']} and {list(evaluations[0]['methods'])}: rerun the evaluation"
            )
        evaluations.append(evaluation)
    return evaluations


def summary_row(
    tile: str,
    date: str,
    split: str,
    method: str,
    dates: int,
    confusion: np.ndarray,
    classes: list[str],
    compared: list[str] | None = None,
) -> dict:
    """One CSV row: identity, pixel count and the metrics of one confusion matrix (scores of `compared` only)."""
    metrics = metrics_from_confusion(confusion, tuple(classes), None if compared is None else tuple(compared))
    row = {"tile": tile, "date": date, "split": split, "method": method, "dates": dates, "pixels": metrics["pixels"]}
    row |= {name: metrics[name] for name in METRIC_COLUMNS}
    row |= {f"{name}_{cls}": metrics[name][cls] for name in PER_CLASS_METRICS for cls in classes}
    return row


def summed_confusions(evaluations: list[dict], roles: list[str], split: str) -> dict[str, np.ndarray]:
    """Confusion matrix per method summed over the dates of one split ('all': every date)."""
    methods = list(evaluations[0]["methods"])
    chosen = [e for e, role in zip(evaluations, roles) if split in ("all", role)]
    return {m: np.sum([e["methods"][m]["confusion"] for e in chosen], axis=0, dtype=np.int64) for m in methods}


def summarise(
    evaluations: list[str],
    stats_path: str | None,
    summary_path: str,
    confusion_path: str,
    page_path: str | None = None,
    configuration: dict | None = None,
) -> None:
    """summary.csv: a row per date and method with its split role, then rows per split (and 'all') computed
    from the summed confusion matrices; confusion.png: row-normalised confusion matrices of the model and of each
    baseline side by side, and per-class IoU of all of them (`write_confusion_plot`); summary.html (for the
    report): the rows as tables, with the configuration the run used. Without stats (an inference-only
    experiment) every date's split role is "unknown"."""
    found = load_evaluations(evaluations)
    split_of = dataset_stats.split_roles(stats_path) if stats_path else {}
    roles = [split_of.get((e["tile"], e["date"]), "unused" if stats_path else "unknown") for e in found]
    classes = found[0]["classes"] if found else list(CLASSES)
    rows = []
    for evaluation, role in zip(found, roles):
        for method, result in evaluation["methods"].items():
            confusion = np.asarray(result["confusion"], np.int64)
            rows.append(
                summary_row(
                    evaluation["tile"], evaluation["date"], role, method, 1, confusion, classes, result.get("compared")
                )
            )
    aggregates: dict[str, dict[str, np.ndarray]] = {}
    for split in [s for s in SPLIT_ORDER if s in roles] + (["all"] if found else []):
        aggregates[split] = summed_confusions(found, roles, split)
        dates = len(found) if split == "all" else roles.count(split)
        for method, confusion in aggregates[split].items():
            rows.append(
                summary_row(
                    "all", "all", split, method, dates, confusion, classes, found[0]["methods"][method].get("compared")
                )
            )
    if not found:
        log.warning("no evaluated dates: the summary is empty")
    write_summary_csv(rows, summary_path, classes)
    write_confusion_plot(aggregates, classes, confusion_path)
    if page_path is not None:
        write_summary_page(rows, classes, configuration or {}, page_path)
    for row in rows:
        if row["date"] == "all":
            log.info(
                "%-10s %-6s macro IoU %s over %d dates", row["split"], row["method"], row["macro_iou"], row["dates"]
            )


def write_summary_csv(rows: list[dict], path: str | Path, classes: list[str]) -> None:
    """Write the summary rows (empty metrics for undefined scores) atomically."""
    columns = ["tile", "date", "split", "method", "dates", "pixels", *METRIC_COLUMNS]
    columns += [f"{name}_{cls}" for name in PER_CLASS_METRICS for cls in classes]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


PAGE_STYLE = (
    "body{font-family:sans-serif;font-size:13px;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #bbb;padding:2px 6px;text-align:right}th{background:#eee}td.text{text-align:left}"
    "tr.model td{font-weight:bold}pre{background:#f6f6f6;padding:8px;font-size:12px}"
)


def summary_table(rows: list[dict], classes: list[str]) -> str:
    """An HTML table of summary rows: identity, pixels, the overall metrics and per-class IoU."""
    text_columns = ["tile", "date", "split", "method"]
    columns = [*text_columns, "dates", "pixels", *METRIC_COLUMNS, *(f"iou_{cls}" for cls in classes)]

    def cell(column: str, value: object) -> str:
        shown = "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        return f'<td class="text">{html.escape(shown)}</td>' if column in text_columns else f"<td>{shown}</td>"

    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = "".join(
        f'<tr class="{html.escape(str(row["method"]))}">' + "".join(cell(c, row.get(c)) for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_summary_page(rows: list[dict], classes: list[str], configuration: dict, path: str | Path) -> None:
    """summary.html: the per-split rows, then the per-date rows, then the configuration of the run as YAML."""
    overall = [row for row in rows if row["date"] == "all"]
    per_date = [row for row in rows if row["date"] != "all"]
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{PAGE_STYLE}</style></head><body>",
        "<h3>Per split (summed confusion matrices)</h3>",
        summary_table(overall, classes) if overall else "<p>No evaluated date.</p>",
        "<h3>Per date</h3>",
        summary_table(per_date, classes) if per_date else "<p>No evaluated date.</p>",
        "<h3>Configuration of this run</h3>",
        f"<pre>{html.escape(yaml.safe_dump(configuration, sort_keys=False))}</pre>",
        "</body></html>",
    ]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts) + "\n")


def plot_confusion(axes, confusion: np.ndarray, classes: list[str], title: str) -> None:
    """Row-normalised confusion matrix (rows: label) with the percentage and the count in each cell."""
    totals = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(confusion):
        colour = "white" if share[i, j] > 0.5 else "black"
        axes.text(j, i, f"{100 * share[i, j]:.1f}%\n{count:,}", ha="center", va="center", fontsize=7, color=colour)
    axes.set_xticks(range(len(classes)), classes, fontsize=8)
    axes.set_yticks(range(len(classes)), classes, fontsize=8)
    axes.set_xlabel("prediction")
    axes.set_ylabel("label")
    axes.set_title(f"{title}\n{int(confusion.sum()):,} pixels", fontsize=9)


def plot_iou_bars(axes, confusions: dict[str, np.ndarray], classes: list[str], title: str) -> None:
    """Per-class IoU (and macro IoU) of each method as grouped bars."""
    names = [*classes, "macro"]
    width = 0.8 / len(confusions)
    for k, (method, confusion) in enumerate(confusions.items()):
        metrics = metrics_from_confusion(confusion, tuple(classes))
        values = [metrics["iou"][c] for c in classes] + [metrics["macro_iou"]]
        axes.bar(np.arange(len(names)) + k * width, [np.nan if v is None else v for v in values], width, label=method)
    axes.set_xticks(np.arange(len(names)) + width * (len(confusions) - 1) / 2, names, fontsize=8)
    axes.set_ylim(0, 1.12)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("IoU")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="upper center", ncol=len(confusions), frameon=False)


def write_confusion_plot(aggregates: dict[str, dict[str, np.ndarray]], classes: list[str], path: str | Path) -> None:
    """Side by side, as PNG: the confusion matrix of each method (model, then the baselines) on the validation
    dates (all dates when no date is wholly validation), the model's on all dates, and the per-class IoU bars of
    every method."""
    from matplotlib.figure import Figure

    split = next((s for s in ("validation", "all") if s in aggregates), None)
    methods = list(aggregates[split]) if split else [MODEL]
    panels_wanted = [(method, split) for method in methods]
    if split == "validation":
        panels_wanted.append((MODEL, "all"))
    figure = Figure(figsize=(4.6 * (len(panels_wanted) + 1), 4.8), dpi=100, layout="constrained")
    panels = figure.subplots(1, len(panels_wanted) + 1)
    for axes, (method, panel_split) in zip(panels, panels_wanted):
        if panel_split is None:
            axes.set_axis_off()
            axes.text(0.5, 0.5, f"{method}:\nno evaluated dates", ha="center", va="center", fontsize=9)
        else:
            plot_confusion(axes, aggregates[panel_split][method], classes, f"{method}, {panel_split} dates")
    if split is None:
        panels[-1].set_axis_off()
    else:
        plot_iou_bars(panels[-1], aggregates[split], classes, f"IoU, {split} dates")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
