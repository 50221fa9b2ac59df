import numpy as np
import pytest

from snowcloud.metrics import confusion_matrix, metrics_from_confusion, thesis_metric_lines


def test_confusion_matrix_counts_pairs_and_skips_ignored_pixels():
    target = np.array([[0, 1, 1], [2, 3, 255]], dtype=np.uint8)
    prediction = np.array([[0, 1, 2], [2, 0, 1]], dtype=np.uint8)
    cm = confusion_matrix(prediction, target)
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
    m = metrics_from_confusion(cm)
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
    m = metrics_from_confusion(np.diag([1, 2, 3, 4]))
    lines = thesis_metric_lines(m)
    assert "- union_over_inter_clouds: 1.0000" in lines
    assert "- dice_coefficient_water: 1.0000" in lines
    assert len(lines) == 12
