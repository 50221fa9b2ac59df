import numpy as np
import pytest

from snowcloud.labels import CLASSES
from snowcloud.metrics import confusion_matrix, metrics_from_confusion, thesis_metric_lines


def test_confusion_matrix_counts_pairs_and_skips_ignored_pixels():
    target = np.array([[0, 1, 1], [2, 3, 255]], dtype=np.uint8)
    prediction = np.array([[0, 1, 2], [2, 0, 1]], dtype=np.uint8)
    cm = confusion_matrix(prediction, target, len(CLASSES))
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = 1
    expected[1, 1] = 1
    expected[1, 2] = 1
    expected[2, 2] = 1
    expected[3, 0] = 1
    np.testing.assert_array_equal(cm, expected)


def test_metrics_on_a_hand_made_confusion_matrix():
    # rows: target, columns: prediction
    cm = np.array([[50, 5, 0, 5], [10, 30, 0, 0], [0, 0, 20, 0], [0, 0, 0, 0]])
    m = metrics_from_confusion(cm, CLASSES)
    # background: TP 50, FP 10, FN 10 -> IoU 50/70, precision 50/60, recall 50/60, F1 100/120
    assert m["iou"]["background"] == pytest.approx(50 / 70)
    assert m["precision"]["background"] == pytest.approx(50 / 60)
    assert m["recall"]["background"] == pytest.approx(50 / 60)
    assert m["f1"]["background"] == pytest.approx(100 / 120)
    # snow: TP 30, FP 5, FN 10
    assert m["iou"]["snow"] == pytest.approx(30 / 45)
    assert m["f1"]["snow"] == pytest.approx(60 / 75)
    # water never occurs but is predicted 5 times: IoU 0, recall undefined
    assert m["iou"]["water"] == 0.0
    assert m["recall"]["water"] is None
    assert m["pixel_accuracy"] == pytest.approx(100 / 120)
    assert m["micro_iou"] == pytest.approx(100 / (100 + 20 + 20))
    assert m["macro_iou"] == pytest.approx(np.mean([50 / 70, 30 / 45, 1.0, 0.0]))
    assert m["macro_recall"] == pytest.approx(np.mean([50 / 60, 30 / 40, 1.0]))
    # binary per-class accuracy (thesis "pixel_accuracy"): snow is wrong on FP + FN = 15 of 120 pixels
    assert m["class_accuracy"]["snow"] == pytest.approx(105 / 120)


def test_thesis_lines_use_the_thesis_class_names():
    m = metrics_from_confusion(np.diag([1, 2, 3, 4]), CLASSES)
    lines = thesis_metric_lines(m)
    assert "- union_over_inter_clouds: 1.0000" in lines
    assert "- dice_coefficient_water: 1.0000" in lines
    assert len(lines) == 12


def test_five_classes_score_by_name_and_classes_not_compared_have_no_scores():
    """913b2a3's classes against labels read with them, and a default-class baseline on the same pixels: the
    union of both sets, scores only for the classes both have (background and thin_cloud are left out)."""
    classes = ("snow", "cloud", "water", "thin_cloud", "background")
    cm = np.zeros((5, 5), int)  # rows: label, columns: prediction
    cm[0, 0], cm[0, 4] = 40, 10  # snow: 40 right, 10 called background (a class the labels do not have)
    cm[1, 1], cm[3, 1] = 30, 20  # cloud: 30 right; 20 thin-cloud pixels called cloud
    cm[2, 2] = 10
    m = metrics_from_confusion(cm, classes, compared=("snow", "cloud", "water"))
    assert m["iou"]["snow"] == pytest.approx(40 / 50) and m["iou"]["cloud"] == pytest.approx(30 / 50)
    assert m["iou"]["thin_cloud"] is None and m["iou"]["background"] is None and m["f1"]["background"] is None
    assert m["macro_iou"] == pytest.approx(np.mean([40 / 50, 30 / 50, 1.0]))
    assert m["pixel_accuracy"] == pytest.approx(80 / 110)  # every evaluated pixel counts, compared or not
    assert "- union_over_inter_thin_cloud: nan" in thesis_metric_lines(m, classes)
    everything = metrics_from_confusion(cm, classes)
    assert everything["iou"]["thin_cloud"] == 0.0 and everything["iou"]["background"] == 0.0
