"""ROI classification metrics: macro accuracy, macro F1, macro AUROC, retrieval accuracy at k.

The definitions follow GPFM's ROI protocol (``ROI_tasks/metrics.py``) and scikit-learn's
conventions, written in numpy so the harness needs no scikit-learn:

- macro accuracy is balanced accuracy: the mean over classes of per-class recall (classes
  absent from the truth are skipped);
- macro F1 averages ``2TP / (2TP + FP + FN)`` over the classes seen in truth or prediction;
- macro AUROC is the area under the ROC curve of the positive class for two classes, and
  the one-vs-rest mean over classes otherwise (ties count one half: the rank statistic);
- retrieval accuracy at k (``roi-knn``): a query is correct when one of its k nearest
  training images shares its class; the mean per class, then over classes.

95% confidence intervals are percentiles of 1000 bootstrap resamples of the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts, rows are the true class."""
    return np.bincount(truth * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_accuracy(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    cm = confusion(truth, pred, num_classes)
    support = cm.sum(1)
    seen = support > 0
    return float(np.mean(np.diag(cm)[seen] / support[seen])) if seen.any() else float("nan")


def per_class_f1(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> list[float | None]:
    """F1 of each class; None for a class neither in the truth nor predicted."""
    cm = confusion(truth, pred, num_classes)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN
    return [float(2 * t / d) if d else None for t, d in zip(tp, denom)]


def macro_f1(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    values = [f for f in per_class_f1(truth, pred, num_classes) if f is not None]
    return float(np.mean(values)) if values else float("nan")


def binary_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC of ``score`` for the boolean labels ``positive``; NaN if one side is empty."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(truth: np.ndarray, prob: np.ndarray) -> float:
    """Two classes: AUROC of class 1's score. More: the one-vs-rest mean over the classes with both sides present."""
    if prob.shape[1] == 2:
        return binary_auroc(truth == 1, prob[:, 1])
    values = [binary_auroc(truth == k, prob[:, k]) for k in range(prob.shape[1])]
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def topk_accuracy(truth: np.ndarray, neighbour_labels: np.ndarray, k: int, num_classes: int) -> float:
    """Macro retrieval accuracy at ``k``: ``neighbour_labels[i]`` are query i's neighbours, nearest first."""
    hit = (neighbour_labels[:, :k] == truth[:, None]).any(1)
    per_class = [hit[truth == c].mean() for c in range(num_classes) if (truth == c).any()]
    return float(np.mean(per_class)) if per_class else float("nan")


def _scores(truth: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    pred = prob.argmax(1)
    k = prob.shape[1]
    return {"macro_acc": macro_accuracy(truth, pred, k), "macro_f1": macro_f1(truth, pred, k), "macro_auroc": macro_auroc(truth, prob)}


@dataclass(frozen=True)
class ClassificationReport:
    metrics: dict[str, float]  # macro_acc, macro_f1, macro_auroc
    ci: dict[str, tuple[float, float]]  # 95% percentile bootstrap interval of each
    per_class_f1: list[float | None]


def evaluate_classification(truth: np.ndarray, prob: np.ndarray, n_boot: int = 1000, seed: int = 0) -> ClassificationReport:
    """Scores of class probabilities ``prob [N, K]`` against ``truth [N]``, with bootstrap CIs.

    A resample that leaves a metric undefined (AUROC of a resample with one class) is
    skipped for that metric only.
    """
    truth = np.asarray(truth, np.int64)
    prob = np.asarray(prob, np.float64)
    if prob.ndim != 2 or len(prob) != len(truth):
        raise ValueError(f"prob must be [N, K] for {len(truth)} labels, got {prob.shape}")
    metrics = _scores(truth, prob)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(n_boot):
        idx = rng.integers(0, len(truth), len(truth))
        for m, v in _scores(truth[idx], prob[idx]).items():
            if v == v:
                samples[m].append(v)
    ci = {m: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (float("nan"), float("nan")) for m, v in samples.items()}
    return ClassificationReport(metrics, ci, per_class_f1(truth, prob.argmax(1), prob.shape[1]))
