"""Semantic segmentation metrics from a confusion matrix, with image-level bootstrap CIs.

Conventions follow the reference benchmark (``protocol.md``): one confusion matrix is
accumulated over the whole split; ignore-index pixels are excluded; mIoU and mDice
average over the classes that occur in prediction or ground truth (TP+FP+FN > 0), so
a class absent from both does not count as a zero. Pixel accuracy is trace / total.
``*_nobg`` drop class 0 (background) from those averages.

The CI resamples *images* with replacement (1000 times by default) and recomputes the
dataset-level metric from the summed per-image matrices: images, not pixels, are the
independent unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``cm[t, p]`` = pixels of true class ``t`` predicted as ``p`` (int64, ``[K, K]``)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    keep = target != ignore_index
    t = target[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if t.size and (t.max() >= num_classes or p.max() >= num_classes or p.min() < 0):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_image_confusion(preds: Sequence[np.ndarray] | np.ndarray, targets: Sequence[np.ndarray] | np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``[N, K, K]``: one matrix per image, so bootstrap resamples are cheap sums."""
    return np.stack([confusion_matrix(p, t, num_classes, ignore_index) for p, t in zip(preds, targets)])


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    present = (tp + fp + fn) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / (tp + fp + fn), np.nan)
        dice = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
    return iou, dice, present


def _mean(values: np.ndarray, skip_background: bool) -> float:
    v = values[1:] if skip_background else values
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def scores(cm: np.ndarray) -> dict[str, float]:
    """The scalar metrics of one confusion matrix."""
    iou, dice, _ = _per_class(cm)
    total = cm.sum()
    return {
        "mIoU": _mean(iou, False),
        "mDice": _mean(dice, False),
        "mIoU_nobg": _mean(iou, True),
        "mDice_nobg": _mean(dice, True),
        "pixel_accuracy": float(np.trace(cm) / total) if total else float("nan"),
    }


@dataclass
class SegmentationReport:
    """Metrics of one split: scalars, per-class values (``None`` = class absent) and 95% CIs."""

    metrics: dict[str, float]
    per_class_iou: list[float | None]
    per_class_dice: list[float | None]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_images: int = 0


def bootstrap_ci(per_image: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile CIs of every scalar metric, resampling images with replacement."""
    rng = np.random.default_rng(seed)
    n = per_image.shape[0]
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        for k, v in scores(per_image[idx].sum(0)).items():
            samples.setdefault(k, []).append(v)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: (float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))) for k, v in samples.items()}


def evaluate(per_image: np.ndarray, n_boot: int = 1000, seed: int = 0) -> SegmentationReport:
    """Full report for a split from its per-image confusion matrices ``[N, K, K]``."""
    cm = per_image.sum(0)
    iou, dice, present = _per_class(cm)
    return SegmentationReport(
        metrics=scores(cm),
        per_class_iou=[float(v) if p else None for v, p in zip(iou, present)],
        per_class_dice=[float(v) if p else None for v, p in zip(dice, present)],
        ci=bootstrap_ci(per_image, n_boot, seed) if n_boot else {},
        n_images=int(per_image.shape[0]),
    )
