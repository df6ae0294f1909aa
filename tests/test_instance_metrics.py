"""Instance metrics on hand-built maps with known answers, and against a naive re-implementation
written from the definitions (per-instance boolean masks, no shared code)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.metrics.instances import PQStats, aji, detection_counts, instances_from_semantic, pq_stats


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_perfect_prediction():
    gt = np.zeros((40, 40), int)
    gt[_disc(gt.shape, 10, 10, 5)] = 1
    gt[_disc(gt.shape, 28, 28, 6)] = 2
    s = pq_stats(gt, gt * 7)  # ids need not agree
    assert (s.tp, s.fp, s.fn) == (2, 0, 0) and s.pq == pytest.approx(1.0) and aji(gt, gt) == 1.0
    assert detection_counts(gt, gt) == (2, 0, 0)


def test_missing_extra_split_and_merged_nuclei():
    gt = np.zeros((30, 60), int)
    gt[5:15, 5:15] = 1                       # found exactly
    gt[5:15, 20:30] = 2                      # missed
    gt[5:15, 40:50] = 3                      # split in two halves by the prediction
    gt[20:28, 5:13], gt[20:28, 13:21] = 4, 5  # two touching nuclei, merged by the prediction
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 1
    pred[5:15, 40:45], pred[5:15, 45:50] = 2, 3
    pred[20:28, 5:21] = 4
    pred[25:29, 52:58] = 9                   # a false positive
    s = pq_stats(gt, pred)
    # only nucleus 1 matches (the halves and the merge have IoU exactly 0.5, which is not > 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 4, 4)
    assert s.sq == pytest.approx(1.0) and s.dq == pytest.approx(1 / (1 + 2 + 2))
    # AJI by hand: pairs (1,1) 100/100; 2 unpaired: +100 union; 3 with one half: 50/100;
    # 4 and 5 both pick the merged 128-px prediction: 64/128 each; unused preds: the other half (50), the FP (24)
    assert aji(gt, pred) == pytest.approx((100 + 50 + 64 + 64) / (100 + 100 + 100 + 128 + 128 + 50 + 24))


def test_pq_stats_sum_over_images():
    a, b = PQStats(2, 1, 0, 1.6), PQStats(1, 0, 2, 0.7)
    total = a + b
    assert (total.tp, total.fp, total.fn) == (3, 1, 2) and total.sq == pytest.approx(2.3 / 3)
    assert np.isnan(PQStats().pq)


def test_watershed_splits_touching_nuclei():
    sem = np.zeros((40, 60), int)
    sem[_disc(sem.shape, 20, 20, 9) | _disc(sem.shape, 20, 36, 9)] = 1   # two overlapping discs: one component
    sem[_disc(sem.shape, 8, 52, 4)] = 2                                  # a nucleus of another class
    inst, cls = instances_from_semantic(sem)
    assert inst.max() == 3
    left, right = inst[20, 14], inst[20, 42]
    assert left != right and left > 0 and right > 0
    assert set(np.unique(cls[inst == inst[8, 52]])) == {2}
    assert ((inst > 0) == (sem > 0)).all()


# --- an independent reference, from the definitions ---------------------------------------


def _masks(inst):
    return [inst == i for i in np.unique(inst) if i != 0]


def _ref_pq(gt, pred):
    g, p = _masks(gt), _masks(pred)
    tp, ious, used = 0, [], set()
    for gm in g:
        for j, pm in enumerate(p):
            iou = (gm & pm).sum() / (gm | pm).sum()
            if iou > 0.5 and j not in used:
                tp += 1
                ious.append(iou)
                used.add(j)
    fp, fn = len(p) - tp, len(g) - tp
    dq = tp / (tp + fp / 2 + fn / 2) if tp + fp + fn else float("nan")
    sq = sum(ious) / tp if tp else 0.0
    return tp, fp, fn, dq * sq


def _ref_aji(gt, pred):
    g, p = _masks(gt), _masks(pred)
    c = u = 0
    used = set()
    for gm in g:
        ious = [((gm & pm).sum() / (gm | pm).sum()) for pm in p]
        if ious and max(ious) > 0:
            j = int(np.argmax(ious))
            c += (gm & p[j]).sum()
            u += (gm | p[j]).sum()
            used.add(j)
        else:
            u += gm.sum()
    u += sum(pm.sum() for j, pm in enumerate(p) if j not in used)
    return c / u if u else 0.0


def _random_instances(rng, shape=(48, 48), n=8):
    inst = np.zeros(shape, int)
    for i in range(1, n + 1):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(2, 7)
        inst[_disc(shape, cy, cx, r)] = i
    return inst


@pytest.mark.parametrize("seed", range(25))
def test_agrees_with_the_reference_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    gt = _random_instances(rng)
    pred = gt.copy()
    # perturb: shift some nuclei, drop one, add one
    pred = np.roll(pred, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
    pred[pred == int(rng.integers(1, 9))] = 0
    pred[_disc(pred.shape, rng.integers(0, 48), rng.integers(0, 48), 3)] = 50
    s = pq_stats(gt, pred)
    tp, fp, fn, pq = _ref_pq(gt, pred)
    assert (s.tp, s.fp, s.fn) == (tp, fp, fn)
    if tp + fp + fn:
        assert s.pq == pytest.approx(pq)
    assert aji(gt, pred) == pytest.approx(_ref_aji(gt, pred))
