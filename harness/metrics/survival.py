"""Survival metrics: Harrell's concordance index with its 95% bootstrap confidence interval.

A pair of cases is comparable when the one with the shorter time had the event; it is
concordant when that case also has the higher predicted risk (ties in risk count one
half). Censored cases enter only as the longer member of a pair. The 95% interval is
the percentile bootstrap over cases (seeded), as the classification metrics' intervals
are: Noether's normal interval, and torchsurv's own bootstrap, fail on folds as small as
a few cases. It is NaN where no resample has a comparable pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CIndex:
    value: float
    ci_low: float
    ci_high: float


def harrell(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C: over pairs with ``time[i] < time[j]`` and ``event[i]``, the share with ``risk[i] > risk[j]`` (ties 1/2).

    Vectorised numpy, since the bootstrap calls it a thousand times per fold; the test suite
    checks it against torchsurv's ``ConcordanceIndex``. NaN without a comparable pair.
    """
    comparable = (time[:, None] < time[None, :]) & event[:, None].astype(bool)
    n = comparable.sum()
    if not n:
        return float("nan")
    diff = risk[:, None] - risk[None, :]
    return float(((diff > 0) & comparable).sum() + 0.5 * ((diff == 0) & comparable).sum()) / float(n)


def concordance(risk: np.ndarray, time: np.ndarray, event: np.ndarray, n_boot: int = 1000, seed: int = 0) -> CIndex:
    """C-index of ``risk`` (higher: earlier event) against ``time`` and ``event`` (1 observed, 0 censored), with a bootstrap CI.

    A resample with no event, or no comparable pair, is skipped (it has no C-index).
    """
    risk, time, event = np.asarray(risk, np.float64), np.asarray(time, np.float64), np.asarray(event, bool)
    value = harrell(risk, time, event)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if value == value else 0):
        idx = rng.integers(0, len(risk), len(risk))
        v = harrell(risk[idx], time[idx], event[idx])
        if v == v:
            boots.append(v)
    low, high = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else (float("nan"), float("nan"))
    return CIndex(value, low, high)
