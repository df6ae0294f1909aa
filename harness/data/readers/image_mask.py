"""``image-mask``: an image file (PNG/TIFF/BMP/JPEG) and a mask image of labels beside it (GlaS, CRAG, TNBC, BCSS, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.data.readers import register
from harness.data.readers.base import Reader, Sample, fail, read_image

if TYPE_CHECKING:
    from harness.data.cards import DatasetCard


def read_mask_image(card: DatasetCard, path: Path) -> np.ndarray:
    """A label image as one channel: RGB masks must be grey (or name their channel in the card)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA") and card.mask.channel is not None:
                return np.asarray(im)[..., card.mask.channel]
            if im.mode in ("RGB", "RGBA"):
                arr = np.asarray(im.convert("RGB"))
                if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                    raise fail(card, path, "mask has 3 different colour channels; expected one channel of labels",
                               "save masks as single-channel label images (or set mask.channel in the card)")
                return arr[..., 0]
            if im.mode == "1":
                return np.asarray(im).astype(np.uint8)
            return np.asarray(im)
    except UnidentifiedImageError:
        raise fail(card, path, "mask is not an image file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise fail(card, path, f"unreadable or truncated mask ({str(exc).splitlines()[0][:120]})") from None


@register
class ImageMaskReader(Reader):
    formats = ("image-mask",)

    def read(self, card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        return read_image(card, sample.image), read_mask_image(card, sample.mask)

    def instances(self, card: DatasetCard, sample: Sample, classes: np.ndarray) -> np.ndarray | None:
        if card.mask.encoding != "binary":
            return None
        raw = read_mask_image(card, sample.mask)
        return raw.astype(np.int64) if len(np.unique(raw)) > 2 else None  # an instance-id mask, binarised by the rule
