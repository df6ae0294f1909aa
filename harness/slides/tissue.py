"""Tissue detection on a slide thumbnail: Otsu's threshold on saturation, then a minimum area.

Glass is bright and grey (low saturation); stained tissue is coloured. Otsu's threshold on
the HSV saturation of a median-filtered thumbnail separates them without a per-scanner
constant, as CLAM and GPFM's patching do. Connected pieces smaller than ``min_area_px``
(dust, pen specks, debris) are dropped, and small holes inside tissue filled.
"""

from __future__ import annotations

import numpy as np

#: Saturation below this is glass whatever Otsu says: a slide with no tissue must not turn its noise into tissue.
MIN_SATURATION = 15


def tissue_mask(thumbnail: np.ndarray, min_area_px: int) -> np.ndarray:
    """Boolean ``[h, w]``: tissue in the RGB ``thumbnail``; connected pieces under ``min_area_px`` pixels are dropped."""
    import cv2

    hsv = cv2.cvtColor(np.ascontiguousarray(thumbnail), cv2.COLOR_RGB2HSV)
    saturation = cv2.medianBlur(hsv[..., 1], 7)
    threshold, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx((saturation > max(threshold, MIN_SATURATION)).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
    return keep[labels]
