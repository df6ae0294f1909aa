"""Sliding-window inference at the original resolution, windows batched across images.

The image is covered by ``window``-sized tiles with the given overlap; the last tile of
each row/column is shifted back to end at the border, and an image smaller than the
window is reflect-padded (the padding is cropped off the result). Logits of overlapping
tiles are blended with a weight map (Gaussian, linear ramp or uniform): the output at a
pixel is ``sum_t w_t(p) * logits_t(p) / sum_t w_t(p)``, so the normalised weights sum to
exactly one everywhere and a constant model gives the constant back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

Blend = Literal["gaussian", "linear", "uniform"]
#: ``[N, w, w, 3]`` uint8 windows -> ``[N, C, w, w]`` float logits.
Predict = Callable[[np.ndarray], np.ndarray]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Tile offsets covering ``[0, length)``; the last tile ends exactly at ``length``."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def blend_weights(window: int, kind: Blend = "gaussian") -> np.ndarray:
    """A ``[window, window]`` weight map, strictly positive (borders included)."""
    if kind == "uniform":
        return np.ones((window, window), np.float64)
    x = np.arange(window) + 0.5
    if kind == "gaussian":
        sigma = window / 8  # nnU-Net's choice: 1/8 of the patch
        w1 = np.exp(-((x - window / 2) ** 2) / (2 * sigma**2))
    else:
        w1 = np.minimum(x, window - x) / (window / 2)
    w1 = np.maximum(w1, 1e-3)
    return np.outer(w1, w1)


def _tiles(h: int, w: int, window: int, overlap: float) -> list[tuple[int, int]]:
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(1, int(round(window * (1 - overlap))))
    return [(y, x) for y in window_starts(h, window, stride) for x in window_starts(w, window, stride)]


def sliding_window(images: Sequence[np.ndarray], predict: Predict, window: int, overlap: float = 0.2,
                   blend: Blend = "gaussian", batch: int = 16) -> list[np.ndarray]:
    """``[C, H, W]`` logits per image; windows from all images share batches of ``batch``."""
    weights = blend_weights(window, blend)
    padded, jobs = [], []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        ph, pw = max(0, window - h), max(0, window - w)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        padded.append(img)
        jobs += [(i, y, x) for y, x in _tiles(img.shape[0], img.shape[1], window, overlap)]
    acc: list[np.ndarray | None] = [None] * len(images)
    wsum = [np.zeros(p.shape[:2]) for p in padded]
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        tiles = np.stack([padded[i][y:y + window, x:x + window] for i, y, x in chunk])
        logits = np.asarray(predict(tiles), np.float64)
        if logits.ndim != 4 or logits.shape[0] != len(chunk) or logits.shape[2:] != (window, window):
            raise ValueError(f"predict returned {logits.shape}; expected [{len(chunk)}, C, {window}, {window}]")
        for (i, y, x), lg in zip(chunk, logits):
            a = acc[i]
            if a is None:
                a = acc[i] = np.zeros((lg.shape[0], *padded[i].shape[:2]))
            a[:, y:y + window, x:x + window] += lg * weights
            wsum[i][y:y + window, x:x + window] += weights
    out = []
    for img, a, ws in zip(images, acc, wsum):
        assert a is not None
        out.append((a / ws)[:, : img.shape[0], : img.shape[1]])
    return out


def coverage(h: int, w: int, window: int, overlap: float = 0.2, blend: Blend = "gaussian") -> np.ndarray:
    """Sum of the normalised blend weights at each pixel (1.0 everywhere by construction)."""
    weights = blend_weights(window, blend)
    ph, pw = max(h, window), max(w, window)
    total = np.zeros((ph, pw))
    tiles = _tiles(ph, pw, window, overlap)
    for y, x in tiles:
        total[y:y + window, x:x + window] += weights
    norm = np.zeros((ph, pw))
    for y, x in tiles:
        norm[y:y + window, x:x + window] += weights / total[y:y + window, x:x + window]
    return norm[:h, :w]
