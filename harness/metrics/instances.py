"""Instance metrics for nuclei: PQ (DQ x SQ), multi-class PQ as in CoNIC, AJI, detection F1.

Definitions (HoVer-Net, Graham et al. 2019; CoNIC, Graham et al. 2021; AJI, Kumar et al.
2017). Instance maps are integer arrays, 0 = background, each positive id one nucleus.

- A predicted and a true instance *match* when their IoU is > 0.5; such matches are
  unique (two instances cannot both overlap one by more than half).
- ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ`` = mean IoU of the matches, ``PQ = DQ x SQ``.
- ``mPQ``: per class, TP/FP/FN and the IoU sum are accumulated over *all* images, then
  PQ is computed per class and averaged over classes (CoNIC's multi-class PQ).
- ``AJI``: every true instance is paired with the predicted one of highest IoU; the
  intersections over the unions of those pairs, with unpaired predictions added to the
  union.
- Detection F1: true and predicted centroids paired one-to-one (Hungarian) within a
  radius (default 6 px, HoVer-Net's at 20x), ``F1 = 2TP / (2TP + FP + FN)``.

Instances are derived from a semantic prediction by :func:`instances_from_semantic`:
connected components per class, split where nuclei touch by a watershed on the
distance transform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize


def _relabel(inst: np.ndarray) -> np.ndarray:
    """Ids made consecutive 1..n (0 stays background)."""
    ids = np.unique(inst)
    ids = ids[ids != 0]
    lut = np.zeros(int(inst.max()) + 1 if inst.size else 1, np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[inst]


def pair_overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection ``[n_true, n_pred]`` and the areas of each instance, for consecutive ids."""
    if true.shape != pred.shape:
        raise ValueError(f"instance maps differ in shape: {true.shape} vs {pred.shape}")
    nt, np_ = int(true.max()), int(pred.max())
    inter = np.bincount(true.ravel().astype(np.int64) * (np_ + 1) + pred.ravel(), minlength=(nt + 1) * (np_ + 1))
    inter = inter.reshape(nt + 1, np_ + 1)
    return inter[1:, 1:], inter[1:, :].sum(1), inter[:, 1:].sum(0)


@dataclass
class PQStats:
    """Summable PQ counts: add them over images, then read :attr:`pq`."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: PQStats) -> PQStats:
        return PQStats(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou_sum + other.iou_sum)

    @property
    def dq(self) -> float:
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.tp / denom if denom else float("nan")

    @property
    def sq(self) -> float:
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def pq(self) -> float:
        return self.dq * self.sq if self.tp + self.fp + self.fn else float("nan")


def pq_stats(true: np.ndarray, pred: np.ndarray) -> PQStats:
    """TP/FP/FN and matched-IoU sum of one image's instance maps (IoU > 0.5 matching)."""
    t, p = _relabel(true), _relabel(pred)
    inter, at, ap = pair_overlaps(t, p)
    union = at[:, None] + ap[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape, float), where=union > 0)
    matched = iou > 0.5
    tp = int(matched.sum())
    return PQStats(tp, int(p.max()) - tp, int(t.max()) - tp, float(iou[matched].sum()))


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index of one image (1.0 when both are empty)."""
    t, p = _relabel(true), _relabel(pred)
    inter, at, ap = pair_overlaps(t, p)
    if t.max() == 0:
        return 1.0 if p.max() == 0 else 0.0
    union = at[:, None] + ap[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape, float), where=union > 0)
    c = u = 0
    used = np.zeros(len(ap), bool)
    for i in range(len(at)):
        if iou.shape[1] and iou[i].max() > 0:
            j = int(iou[i].argmax())
            c += inter[i, j]
            u += union[i, j]
            used[j] = True
        else:
            u += at[i]
    u += ap[~used].sum()
    return float(c / u) if u else 0.0


def centroids(inst: np.ndarray) -> np.ndarray:
    """``[n, 2]`` (row, col) centroids of consecutive ids 1..n."""
    n = int(inst.max())
    if n == 0:
        return np.zeros((0, 2))
    return np.asarray(ndimage.center_of_mass(np.ones_like(inst), inst, np.arange(1, n + 1)), float).reshape(n, 2)


def detection_counts(true: np.ndarray, pred: np.ndarray, radius: float = 6.0) -> tuple[int, int, int]:
    """(TP, FP, FN) of centroids paired one-to-one within ``radius`` pixels."""
    ct, cp = centroids(_relabel(true)), centroids(_relabel(pred))
    if not len(ct) or not len(cp):
        return 0, len(cp), len(ct)
    dist = np.linalg.norm(ct[:, None] - cp[None], axis=-1)
    rows, cols = optimize.linear_sum_assignment(dist)
    tp = int((dist[rows, cols] <= radius).sum())
    return tp, len(cp) - tp, len(ct) - tp


def instances_from_semantic(semantic: np.ndarray, min_distance: int = 3, min_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Instance map and per-pixel class from a semantic prediction (class 0 = background).

    Each class's foreground is split into connected components; touching nuclei inside
    one component are separated by a watershed on the distance transform, seeded at its
    local maxima (at least ``min_distance`` px apart). Instances under ``min_size``
    pixels are dropped.
    """
    inst = np.zeros(semantic.shape, np.int32)
    next_id = 1
    for cls in np.unique(semantic):
        if cls == 0:
            continue
        fg = semantic == cls
        dist = ndimage.distance_transform_edt(fg)
        peaks = (dist == ndimage.maximum_filter(dist, size=2 * min_distance + 1)) & (dist >= 1)
        markers, n = ndimage.label(peaks)
        comps, ncomp = ndimage.label(fg)
        # components with no marker (thin shapes) still get one seed
        have = np.unique(comps[markers > 0])
        for c in set(range(1, ncomp + 1)) - set(have.tolist()):
            ys, xs = np.nonzero(comps == c)
            n += 1
            markers[ys[0], xs[0]] = n
        relief = (dist.max() - dist) / max(dist.max(), 1) * 65000
        ws = ndimage.watershed_ift(relief.astype(np.uint16), markers.astype(np.int32))
        ws[~fg] = 0
        for lab in np.unique(ws):
            if lab == 0:
                continue
            parts, n_parts = ndimage.label(ws == lab)  # a seed's basin can span two components
            for part in range(1, n_parts + 1):
                piece = parts == part
                if piece.sum() >= min_size:
                    inst[piece] = next_id
                    next_id += 1
    classes = np.zeros(semantic.shape, semantic.dtype)
    classes[inst > 0] = semantic[inst > 0]
    return inst, classes


def score_instances(preds, true_classes, true_instances, num_classes: int, radius: float = 6.0) -> dict[str, float]:
    """Dataset-level instance metrics from semantic predictions and the true class/instance maps.

    PQ/DQ/SQ treat every nucleus as one class (counts summed over images); mPQ is
    CoNIC's per-class PQ over the whole split, averaged over classes that occur; AJI is
    the mean of the per-image AJI (HoVer-Net's convention); detection F1 pools the
    centroid matches of all images.
    """
    total = PQStats()
    per_class = [PQStats() for _ in range(num_classes)]
    ajis, det = [], np.zeros(3, np.int64)
    for pred, tcls, tinst in zip(preds, true_classes, true_instances):
        pinst, pcls = instances_from_semantic(np.asarray(pred))
        total = total + pq_stats(tinst, pinst)
        ajis.append(aji(tinst, pinst))
        det += detection_counts(tinst, pinst, radius)
        for c in range(1, num_classes):
            per_class[c] = per_class[c] + pq_stats(np.where(tcls == c, tinst, 0), np.where(pcls == c, pinst, 0))
    class_pq = [s.pq for s in per_class[1:] if s.tp + s.fp + s.fn]
    tp, fp, fn = det.tolist()
    return {
        "PQ": total.pq, "DQ": total.dq, "SQ": total.sq,
        "mPQ": float(np.mean(class_pq)) if class_pq else float("nan"),
        "AJI": float(np.mean(ajis)) if ajis else float("nan"),
        "det_F1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
    }
