"""Per-date evaluation and the summary, on GeoTIFF scenes, predictions, labels and stats.json the tests write."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers.rasters import CRS, TRANSFORM, write_scene
from helpers.surface_spectra import SPECTRA
from rasterio.transform import from_origin

from snowcloud import cloudprob, dataset_stats
from snowcloud.bands import BANDS
from snowcloud.baselines import NDSI_BANDS, ndsi_rule
from snowcloud.evaluate import EvaluationError, evaluate_scene, summarise
from snowcloud.labels import CLASSES, IGNORE_INDEX, LabelError
from snowcloud.metrics import confusion_matrix, metrics_from_confusion
from snowcloud.scene import NODATA, SceneError

OPTIONS = {
    "margin_pixels": 0,
    "baselines": ["ndsi"],
    "ndsi": {"snow_ndsi": 0.4, "snow_green": 0.1, "cloud_blue": 0.25, "water_ndwi": 0.2},
    "s2cloudless": {"threshold": 0.4, "average_over": 4, "dilation_size": 2, "all_bands": True, "resolution_m": 60},
}
TILE, DATE = "32TNS", "20210116T102351"

# A 4 x 5 scene counted by hand (255 = not labelled / no prediction).
LABEL = np.array(
    [
        [0, 0, 1, 1, 255],
        [0, 2, 1, 1, 255],
        [3, 2, 2, 1, 0],
        [255, 255, 0, 0, 0],
    ],
    np.uint8,
)
PREDICTION = np.array(
    [
        [0, 1, 1, 1, 1],
        [0, 2, 2, 1, 255],
        [0, 2, 2, 1, 0],
        [0, 0, 0, 255, 0],
    ],
    np.uint8,
)
# Pairs (label, prediction) on the 15 pixels with both: 5x(0,0) 1x(0,1) 4x(1,1) 1x(1,2) 3x(2,2) 1x(3,0).
MODEL_CONFUSION = [[5, 1, 0, 0], [0, 4, 1, 0], [0, 0, 3, 0], [1, 0, 0, 0]]
# The scene is meadow except snow spectra where the label is snow, so the NDSI rule says snow exactly there:
# labels 0 -> 0 (6 px), 1 -> 1 (5 px), 2 -> 0 (3 px), 3 -> 0 (1 px).
NDSI_CONFUSION = [[6, 0, 0, 0], [0, 5, 0, 0], [3, 0, 0, 0], [1, 0, 0, 0]]


def write_mask(path: Path, classes: np.ndarray, transform=TRANSFORM) -> Path:
    """A uint8 class GeoTIFF (prediction or label) on the scene grid."""
    profile = {
        "driver": "GTiff",
        "width": classes.shape[1],
        "height": classes.shape[0],
        "count": 1,
        "dtype": "uint8",
        "crs": CRS,
        "transform": transform,
        "nodata": IGNORE_INDEX,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes, 1)
    return path


def scene_from_spectra(snow: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """13-band scene values: the meadow spectrum, the fresh-snow spectrum where `snow`, nodata where `invalid`."""
    values = np.full((len(BANDS), *snow.shape), 1000, np.int16)
    for surface, where in (("meadow", ~snow), ("fresh snow", snow)):
        for band, reflectance in zip(("B02", "B03", "B08", "B11"), SPECTRA[surface][0]):
            values[BANDS.index(band)][where] = round(reflectance * 10000)
    values[:, invalid] = NODATA
    return values


def hand_counted_inputs(root: Path, date: str = DATE) -> dict[str, str]:
    invalid = PREDICTION == IGNORE_INDEX  # the prediction has no class where the scene has no data
    scene = write_scene(root / "scenes" / TILE / f"{date}.tif", scene_from_spectra(LABEL == 1, invalid))
    prediction = write_mask(root / "predictions" / TILE / f"{date}.tif", PREDICTION)
    label = write_mask(root / "labels" / TILE / f"{date}.tif", LABEL)
    return {"prediction": str(prediction), "label": str(label), "scene": str(scene)}


def test_confusion_and_metrics_match_a_hand_count(tmp_path):
    output = tmp_path / "evaluation" / f"{DATE}.json"
    evaluate_scene(**hand_counted_inputs(tmp_path), output=str(output), options=OPTIONS)
    result = json.loads(output.read_text())
    assert (result["tile"], result["date"]) == (TILE, DATE)
    assert result["pixels"] == {"total": 20, "labelled": 16, "predicted": 18, "margin_excluded": 0, "evaluated": 15}
    model, ndsi = result["methods"]["model"], result["methods"]["ndsi"]
    assert model["confusion"] == MODEL_CONFUSION  # unlabelled or unpredicted pixels never count as background
    assert ndsi["confusion"] == NDSI_CONFUSION  # the baseline on exactly the same 15 pixels
    assert model["metrics"]["iou"]["background"] == pytest.approx(5 / 7)
    assert model["metrics"]["iou"]["snow"] == pytest.approx(4 / 6)
    assert model["metrics"]["iou"]["water"] == 0.0
    assert model["metrics"]["pixel_accuracy"] == pytest.approx(12 / 15)
    assert ndsi["metrics"]["recall"]["cloud"] == 0.0
    assert "- union_over_inter_clouds: 0.7500" in model["thesis_lines"]


def test_margin_is_in_pixels(tmp_path):
    output = tmp_path / "evaluation.json"
    evaluate_scene(**hand_counted_inputs(tmp_path), output=str(output), options={**OPTIONS, "margin_pixels": 1})
    result = json.loads(output.read_text())
    # Rows 1..2, columns 1..3 remain: (2,2) (1,2) (1,1) / (2,2) (2,2) (1,1).
    assert result["pixels"]["evaluated"] == 6 and result["pixels"]["margin_excluded"] == 9
    assert result["methods"]["model"]["confusion"] == [[0, 0, 0, 0], [0, 2, 1, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    with pytest.raises(EvaluationError, match="margin_pixels = 2 leaves no pixel"):
        evaluate_scene(**hand_counted_inputs(tmp_path), output=str(output), options={**OPTIONS, "margin_pixels": 2})


def test_label_or_prediction_on_another_grid_is_an_error(tmp_path):
    inputs = hand_counted_inputs(tmp_path)
    shifted = from_origin(TRANSFORM.c + 5, TRANSFORM.f, 10, 10)  # half a pixel east
    output = tmp_path / "evaluation.json"
    label = write_mask(tmp_path / "shifted_label.tif", LABEL, transform=shifted)
    with pytest.raises(LabelError, match="shifted_label.tif"):
        evaluate_scene(**{**inputs, "label": str(label)}, output=str(output), options=OPTIONS)
    prediction = write_mask(tmp_path / "shifted_prediction.tif", PREDICTION, transform=shifted)
    with pytest.raises(SceneError, match="same grid"):
        evaluate_scene(**{**inputs, "prediction": str(prediction)}, output=str(output), options=OPTIONS)
    assert not output.exists()


def test_prediction_of_another_scene_is_refused(tmp_path):
    inputs = hand_counted_inputs(tmp_path)
    full = write_mask(tmp_path / "other_prediction.tif", np.where(PREDICTION == IGNORE_INDEX, 1, PREDICTION))
    with pytest.raises(EvaluationError, match="no data"):
        evaluate_scene(**{**inputs, "prediction": str(full)}, output=str(tmp_path / "e.json"), options=OPTIONS)


# ----------------------------------------------------------------------------------------------- summary


def write_stats(path: Path, members: list[dict], dates: list[str]) -> Path:
    """A stats.json with the parts the summary reads (format, per-date entries, split)."""
    entries = [{"tile": TILE, "date": date, "shard": f"results/shards/demo/{TILE}/{date}.h5"} for date in dates]
    method = "date" if "set" in members[0] else "patch"
    stats = {"format": dataset_stats.FORMAT, "dates": entries, "split": {"method": method, "members": members}}
    path.write_text(json.dumps(stats))
    return path


def three_evaluations(tmp_path: Path) -> list[str]:
    """Evaluations of three dates with different predictions: the hand-counted one, then snow predicted as
    background, then cloud predicted as water."""
    predictions = (PREDICTION, np.where(PREDICTION == 1, 0, PREDICTION), np.where(PREDICTION == 2, 3, PREDICTION))
    outputs = []
    for date, prediction in zip(("20210101T100000", "20210201T100000", "20210301T100000"), predictions):
        inputs = hand_counted_inputs(tmp_path / date, date)
        write_mask(Path(inputs["prediction"]), prediction.astype(np.uint8))
        output = tmp_path / "evaluation" / TILE / f"{date}.json"
        evaluate_scene(**inputs, output=str(output), options=OPTIONS)
        outputs.append(str(output))
    return outputs


def test_summary_rows_per_date_and_aggregates_from_summed_matrices(tmp_path):
    evaluations = three_evaluations(tmp_path)
    dates = [Path(p).stem for p in evaluations]
    members = [
        {"shard": f"results/shards/demo/{TILE}/{d}.h5", "set": s}
        for d, s in zip(dates, ("train", "train", "validation"))
    ]
    stats = write_stats(tmp_path / "stats.json", members, dates)
    summary, confusion, page = tmp_path / "summary.csv", tmp_path / "confusion.png", tmp_path / "summary.html"
    configuration = {"evaluation": {"margin_pixels": 7, "baselines": ["ndsi"]}}
    summarise(evaluations, str(stats), str(summary), str(confusion), str(page), configuration)

    rows = list(csv.DictReader(summary.open()))
    per_date = [r for r in rows if r["date"] != "all"]
    assert [(r["date"], r["split"], r["method"]) for r in per_date] == [
        (dates[0], "train", "model"),
        (dates[0], "train", "ndsi"),
        (dates[1], "train", "model"),
        (dates[1], "train", "ndsi"),
        (dates[2], "validation", "model"),
        (dates[2], "validation", "ndsi"),
    ]
    aggregates = {(r["split"], r["method"]): r for r in rows if r["date"] == "all"}
    assert set(aggregates) == {(s, m) for s in ("train", "validation", "all") for m in ("model", "ndsi")}

    results = [json.loads(Path(p).read_text()) for p in evaluations]
    train_sum = sum(np.asarray(r["methods"]["model"]["confusion"]) for r in results[:2])
    expected = metrics_from_confusion(train_sum, CLASSES)
    train_row = aggregates[("train", "model")]
    assert int(train_row["dates"]) == 2 and int(train_row["pixels"]) == train_sum.sum()
    assert float(train_row["macro_iou"]) == pytest.approx(expected["macro_iou"])
    assert float(train_row["iou_snow"]) == pytest.approx(expected["iou"]["snow"])
    mean_of_dates = np.mean([r["methods"]["model"]["metrics"]["macro_iou"] for r in results[:2]])
    assert float(train_row["macro_iou"]) != pytest.approx(mean_of_dates)  # not the mean of per-date scores
    validation_row = aggregates[("validation", "model")]
    assert float(validation_row["macro_iou"]) == pytest.approx(results[2]["methods"]["model"]["metrics"]["macro_iou"])
    assert confusion.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert text.count("<table>") == 2 and text.count('<tr class="model">') == 3 + 3  # 3 splits, 3 dates
    assert f"<td>{float(validation_row['macro_iou']):.4f}</td>" in text
    assert "margin_pixels: 7" in text


def test_patch_split_dates_are_mixed(tmp_path):
    evaluations = three_evaluations(tmp_path)
    dates = [Path(p).stem for p in evaluations]
    # The third date's patches all train, but under a patch split it is still no independent validation date.
    patches = [([0, 2], [1]), ([1], [0, 2]), ([0, 1, 2], [])]
    members = [
        {"shard": f"results/shards/demo/{TILE}/{d}.h5", "train": t, "validation": v}
        for d, (t, v) in zip(dates, patches)
    ]
    stats = write_stats(tmp_path / "stats.json", members, dates)
    summary = tmp_path / "summary.csv"
    summarise(evaluations, str(stats), str(summary), str(tmp_path / "confusion.png"))
    rows = list(csv.DictReader(summary.open()))
    assert {r["split"] for r in rows} == {"mixed", "all"}
    assert {r["split"] for r in rows if r["date"] == "all"} == {"mixed", "all"}
    assert (tmp_path / "confusion.png").stat().st_size > 0


def test_evaluations_with_different_methods_are_refused(tmp_path):
    evaluations = three_evaluations(tmp_path)
    edited = json.loads(Path(evaluations[1]).read_text())
    del edited["methods"]["ndsi"]
    Path(evaluations[1]).write_text(json.dumps(edited))
    members = [{"shard": f"results/shards/demo/{TILE}/{DATE}.h5", "set": "train"}]
    stats = write_stats(tmp_path / "stats.json", members, [DATE])
    with pytest.raises(EvaluationError, match=Path(evaluations[1]).name):
        summarise(evaluations, str(stats), str(tmp_path / "s.csv"), str(tmp_path / "c.png"))
    assert not (tmp_path / "s.csv").exists()


def test_no_evaluated_dates_give_an_empty_summary(tmp_path):
    members = [{"shard": f"results/shards/demo/{TILE}/{DATE}.h5", "set": "train"}]
    stats = write_stats(tmp_path / "stats.json", members, [DATE])
    summary, confusion = tmp_path / "summary.csv", tmp_path / "confusion.png"
    summarise([], str(stats), str(summary), str(confusion))
    lines = summary.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tile,date,split,method,dates,pixels")
    assert confusion.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


S2CLOUDLESS = {"threshold": 0.4, "average_over": 1, "dilation_size": 1, "all_bands": True, "resolution_m": 10}


def test_s2cloudless_is_scored_on_exactly_the_model_pixels_with_the_ndsi_rule_for_the_other_classes(tmp_path):
    # Meadow with a bright cloud block (reflectance 0.6 in every band) and a snow block; a no-data corner the model
    # did not predict, an unlabelled row; s2cloudless in strips of 5 rows re-cut into the evaluation's windows.
    shape = (23, 30)
    cloud, snow = np.zeros(shape, bool), np.zeros(shape, bool)
    cloud[3:11, 4:16], snow[14:20, 18:27] = True, True
    invalid = np.zeros(shape, bool)
    invalid[:4, 24:] = True
    values = scene_from_spectra(snow, invalid)
    values[BANDS.index("B10")][~invalid] = 20  # cirrus band: dark where clear
    values[:, cloud] = 6000
    scene = write_scene(tmp_path / "scenes" / TILE / f"{DATE}.tif", values)
    label = np.where(cloud, 2, np.where(snow, 1, 0)).astype(np.uint8)
    label[21] = IGNORE_INDEX
    prediction = np.where(invalid, IGNORE_INDEX, label).astype(np.uint8)
    inputs = {
        "scene": str(scene),
        "label": str(write_mask(tmp_path / "label.tif", label)),
        "prediction": str(write_mask(tmp_path / "prediction.tif", prediction)),
    }
    options = {**OPTIONS, "baselines": ["ndsi", "s2cloudless"], "s2cloudless": {**S2CLOUDLESS, "strip_rows": 5}}
    output = tmp_path / "evaluation.json"
    evaluate_scene(**inputs, output=str(output), options=options, threads=1)
    result = json.loads(output.read_text())

    evaluated = (label != IGNORE_INDEX) & ~invalid
    assert result["pixels"]["evaluated"] == evaluated.sum()
    mask = np.concatenate([s.mask for s in cloudprob.cloud_strips(scene, **S2CLOUDLESS)])
    bands = {band: values[BANDS.index(band)] for band in NDSI_BANDS}
    expected = ndsi_rule(bands, OPTIONS["ndsi"], ~invalid, cloud=mask)
    s2 = result["methods"]["s2cloudless"]
    assert s2["confusion"] == confusion_matrix(expected[evaluated], label[evaluated], 4).tolist()
    assert np.sum(s2["confusion"]) == np.sum(result["methods"]["model"]["confusion"]) == evaluated.sum()
    assert s2["metrics"]["recall"]["cloud"] == 1.0  # the cloud block is found
    assert s2["confusion"][0][2] < 0.2 * np.sum(s2["confusion"][0])  # most of the meadow is clear
    assert result["baseline_options"]["s2cloudless"]["resolution_m"] == 10


def test_another_class_set_is_compared_by_name_and_what_one_side_lacks_is_not_scored(tmp_path):
    """913b2a3's classes (snow, cloud, water, thin_cloud; background ignored) in the labels and the model, the NDSI
    baseline with the default four: the matrices span the union of names; each method is scored on the classes
    both it and the labels have."""
    inputs = hand_counted_inputs(tmp_path)
    era_a = ["snow", "cloud", "water", "thin_cloud"]
    recoded = np.choose(np.minimum(PREDICTION, 4), [3, 0, 1, 2, 255]).astype(np.uint8)  # background -> thin_cloud
    with rasterio.open(write_mask(Path(inputs["prediction"]), recoded), "r+") as mask:
        mask.update_tags(classes=json.dumps(era_a))
    class_set = {
        "classes": {"snow": [1], "cloud": [2], "water": [3], "thin_cloud": [4]},
        "ignored_classes": {"background": [0]},
    }
    output = tmp_path / "era_a.json"
    evaluate_scene(**inputs, output=str(output), options=OPTIONS, class_set=class_set)
    result = json.loads(output.read_text())
    assert result["classes"] == [*era_a, "background"] and result["pixels"]["evaluated"] == 9
    model, ndsi = result["methods"]["model"], result["methods"]["ndsi"]
    # label background is not labelled now: of the hand-counted pairs, (1,1) x4 (1,2) (2,2) x3 (3,0) remain
    assert model["confusion"] == [[4, 1, 0, 0, 0], [0, 3, 0, 0, 0], [0, 0, 0, 1, 0], [0] * 5, [0] * 5]
    assert model["not_compared"] == ["background"] and model["metrics"]["iou"]["snow"] == pytest.approx(4 / 5)
    assert model["metrics"]["iou"]["thin_cloud"] == 0.0 and model["metrics"]["iou"]["background"] is None
    assert ndsi["confusion"] == [[5, 0, 0, 0, 0], [0, 0, 0, 0, 3], [0, 0, 0, 0, 1], [0] * 5, [0] * 5]
    assert ndsi["compared"] == ["snow", "cloud", "water"] and ndsi["metrics"]["iou"]["thin_cloud"] is None
    assert ndsi["metrics"]["macro_iou"] == pytest.approx(np.mean([1.0, 0.0, 0.0]))


def test_the_jobs_that_read_masks_do_not_import_torch_or_matplotlib_for_it():
    """Evaluation, the season table and the STAC catalogue read masks' tags and pixels: importing them must not
    pull in torch (1.8 s of CPU per workflow job) or, for evaluation, matplotlib (the summary imports it itself)."""
    code = (
        "import sys, snowcloud.evaluate, snowcloud.season, snowcloud.stac; "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"
