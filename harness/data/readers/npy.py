"""``npy``: array files with one sample per row, as PanNuke (images.npy + masks.npy per fold) and CoNIC ship them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.data.readers import register
from harness.data.readers.base import Reader, Sample, fail

if TYPE_CHECKING:
    from harness.data.cards import DatasetCard

_CACHE: dict[Path, np.ndarray] = {}


def _load(card: DatasetCard, path: Path) -> np.ndarray:
    """The array file memory-mapped; one pair at a time is kept open, since rows are read in file order."""
    if path not in _CACHE:
        try:
            _CACHE.clear()
            _CACHE[path] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise fail(card, path, f"unreadable .npy file ({str(exc)[:100] or type(exc).__name__})") from None
    return _CACHE[path]


@register
class NpyReader(Reader):
    formats = ("npy",)

    def rows(self, card: DatasetCard, path: Path) -> int | None:
        return int(_load(card, path).shape[0])

    def read(self, card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        images = _load(card, sample.image)
        assert sample.row is not None, "npy samples carry their row"
        img = np.asarray(images[sample.row])
        if img.ndim != 3 or img.shape[-1] != 3:
            raise fail(card, sample.image, f"row {sample.row} has shape {img.shape}; expected [H, W, 3]")
        if img.dtype != np.uint8:  # PanNuke stores float64 in 0..255
            if img.min() < 0 or img.max() > 255:
                raise fail(card, sample.image, f"row {sample.row} has values outside 0..255")
            img = img.astype(np.uint8)
        masks = _load(card, sample.mask)
        if masks.shape[0] != images.shape[0]:
            raise fail(card, sample.mask, f"{masks.shape[0]} mask rows but {images.shape[0]} image rows in {sample.image.name}")
        raw = np.asarray(masks[sample.row])
        if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(raw, np.round(raw)):
            raise fail(card, sample.mask, f"row {sample.row} holds fractional label values", "masks are integer labels; check the file is the release's mask array")
        if card.mask.channel is not None:
            raw = raw[..., card.mask.channel]
        return img, raw

    def instances(self, card: DatasetCard, sample: Sample, classes: np.ndarray) -> np.ndarray | None:
        raw = np.asarray(_load(card, sample.mask)[sample.row])
        if card.mask.encoding == "channels":  # PanNuke: per-class instance channels
            inst = np.zeros(raw.shape[:2], np.int64)
            for ch, cls in enumerate(card.mask.channels):
                if cls is not None:
                    layer = raw[..., ch].astype(np.int64)
                    inst = np.where(layer > 0, layer + inst.max() + 1, inst) if (layer > 0).any() else inst
            return inst
        return raw[..., 0].astype(np.int64) if raw.ndim == 3 else None  # CoNIC: instance channel first

    def check_card(self, card: DatasetCard) -> None:
        if card.task != "segmentation" or card.layout.masks is None:
            raise ValueError("format npy is a segmentation format with layout.masks")
        if "id" in card.layout.fields("images"):
            raise ValueError("npy layouts have no {id}: each row of an array file is a sample")
