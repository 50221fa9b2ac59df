"""The thesis's epoch metrics (softmax > threshold, one against the rest; n + 1 batches over n) on hand-made cases."""

import math

import numpy as np
import pytest

from snowcloud.labels import CLASSES
from snowcloud.metrics import thesis_metric_lines
from snowcloud.thesis_metrics import as_metrics, batch_metrics, epoch_average

# One batch of 1 x 2 x 3 pixels, 4 classes (background, snow, cloud, water). Softmax rows per pixel:
PROBABILITIES = np.array(
    [
        [0.70, 0.10, 0.10, 0.10],  # label 0: background above 0.65 -> TP background
        [0.10, 0.80, 0.05, 0.05],  # label 1: TP snow
        [0.10, 0.60, 0.25, 0.05],  # label 1: snow wins the argmax but stays below 0.65 -> no class at all
        [0.05, 0.05, 0.85, 0.05],  # label 2: TP cloud
        [0.05, 0.05, 0.70, 0.20],  # label 3: cloud above 0.65 -> FP cloud, FN water
        [0.05, 0.05, 0.10, 0.80],  # label 255 (unlabelled): water above 0.65 -> FP water (a negative of every class)
    ]
)
LABEL = np.array([0, 1, 1, 2, 3, 255])


def batch():
    return PROBABILITIES.T.reshape(1, 4, 2, 3), LABEL.reshape(1, 2, 3)


def test_thresholded_one_vs_rest_metrics_equal_a_hand_computation():
    probabilities, label = batch()
    accuracy, iou, dice = batch_metrics(probabilities, label, 0.65)
    # Per class: predicted positives p, actual positives y, both (p.y) over the 6 pixels.
    # background p=1 y=1 both=1; snow p=1 y=2 both=1; cloud p=2 y=1 both=1; water p=1 y=1 both=0.
    np.testing.assert_allclose(accuracy, [6 / 6, 5 / 6, 5 / 6, 4 / 6])
    np.testing.assert_allclose(iou, [1 / 1, 1 / 2, 1 / 2, 0 / 2])
    np.testing.assert_allclose(dice, [2 / 2, 2 / 3, 2 / 3, 0 / 2])


def test_the_threshold_quirk_differs_from_the_argmax():
    probabilities, label = batch()
    # At threshold 0.5 pixel 3 becomes snow: snow IoU 2/2 where 0.65 gave 1/2.
    assert batch_metrics(probabilities, label, 0.5)[1][1] == 1.0
    assert batch_metrics(probabilities, label, 0.65)[1][1] == 0.5


def test_a_class_neither_present_nor_predicted_has_nan_iou_like_the_thesis():
    probabilities, label = batch()
    label = np.where(label == 3, 0, label)
    probabilities = probabilities.copy()
    probabilities[:, 3] = 0.0
    assert math.isnan(batch_metrics(probabilities, label, 0.65)[1][3])


def test_the_epoch_value_sums_one_batch_more_than_it_divides_by():
    a, b, c = np.full((3, 4), 0.9), np.full((3, 4), 0.6), np.full((3, 4), 0.3)
    np.testing.assert_allclose(epoch_average([a, b, c], steps=2), (0.9 + 0.6 + 0.3) / 2)
    np.testing.assert_allclose(epoch_average([a, b, c], steps=1), (0.9 + 0.6) / 1)  # the rest is never reached
    with pytest.raises(ValueError):
        epoch_average([], steps=1)


def test_thesis_metrics_print_in_the_thesis_log_format():
    probabilities, label = batch()
    lines = thesis_metric_lines(as_metrics(batch_metrics(probabilities, label, 0.65), CLASSES))
    assert lines[0] == "- pixel_accuracy___background: 1.0000"
    assert "- union_over_inter_clouds: 0.5000" in lines
    assert "- dice_coefficient_water: 0.0000" in lines
    assert len(lines) == 12


def test_class_distributions_print_in_the_thesis_format_with_the_real_fifth_class_where_it_printed_one():
    from snowcloud.reproduction import distribution_line, ours_distribution

    assert distribution_line([0.41002, 0.29181, 0.29019, 0.00798]) == (
        "Total Class Distribution: [0.41002, 0.29181, 0.29019, 0.00798]"
    )
    stats = {
        "classes": ["background", "snow", "cloud", "water"],
        "encoded_classes": ["background", "snow", "cloud", "water", "thin_cloud"],
        "total": {
            "class_fraction": {"patch-mean": [0.5, 0.25, 0.2, 0.05], "encoded patch-mean": [0.4, 0.2, 0.16, 0.04, 0.2]}
        },
    }
    names, fractions = ours_distribution(stats, {"class_distribution": [0.27588, 0.23729, 0.48049, 0.00634, 0]})
    assert names[-1] == "thin_cloud"
    assert distribution_line(fractions) == "Total Class Distribution: [0.40000, 0.20000, 0.16000, 0.04000, 0.20000]"
    assert ours_distribution(stats, {}) == (stats["classes"], [0.5, 0.25, 0.2, 0.05])
