"""Metrics against hand-computed confusion matrices, absent classes and ignore pixels included."""

from __future__ import annotations

import numpy as np
import pytest

from harness.metrics.segmentation import bootstrap_ci, confusion_matrix, evaluate, per_image_confusion, scores


def test_confusion_matrix_counts_and_ignores():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, 3)
    # rows = truth, cols = prediction; the 255 pixel is not counted
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_scores_by_hand():
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    s = scores(cm)
    # class 0: tp1 fp1 fn1 -> IoU 1/3, Dice 2/4; class 1: tp2 fp1 fn0 -> 2/3, 4/5; class 2: tp0 fp0 fn1 -> 0, 0
    assert s["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert s["mDice"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert s["mIoU_nobg"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["mDice_nobg"] == pytest.approx(0.4)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)


def test_class_absent_from_truth_and_prediction_is_not_averaged():
    cm = np.array([[5, 0, 0], [0, 3, 0], [0, 0, 0]])  # class 2 never occurs
    s = scores(cm)
    assert s["mIoU"] == 1.0 and s["mDice"] == 1.0
    rep = evaluate(cm[None], n_boot=0)
    assert rep.per_class_iou == [1.0, 1.0, None]


def test_false_positive_class_counts_as_zero():
    cm = np.array([[4, 0, 1], [0, 3, 0], [0, 0, 0]])  # class 2 only predicted
    s = scores(cm)
    assert s["mIoU"] == pytest.approx((4 / 5 + 1 + 0) / 3)


def test_per_image_matrices_sum_to_the_dataset_matrix():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, (6, 8, 8))
    p = rng.integers(0, 4, (6, 8, 8))
    per = per_image_confusion(p, t, 4)
    assert per.shape == (6, 4, 4)
    assert np.array_equal(per.sum(0), confusion_matrix(p, t, 4))


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 3, (20, 16, 16))
    p = np.where(rng.random((20, 16, 16)) < 0.7, t, rng.integers(0, 3, (20, 16, 16)))
    per = per_image_confusion(p, t, 3)
    rep = evaluate(per, n_boot=300, seed=3)
    low, high = rep.ci["mIoU"]
    assert low < rep.metrics["mIoU"] < high
    assert high - low < 0.2
    assert bootstrap_ci(per, 300, seed=3) == rep.ci
    identical = per_image_confusion(t, t, 3)
    assert evaluate(identical, n_boot=100).ci["mDice"] == (1.0, 1.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
