"""``image-folder``: ROI classification, one label per image given by its ``{group}`` folder (GPFM's ROI tasks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.data.readers import register
from harness.data.readers.base import Reader, Sample, read_image

if TYPE_CHECKING:
    from harness.data.cards import DatasetCard


@register
class ImageFolderReader(Reader):
    formats = ("image-folder",)

    def read(self, card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(card, sample.image)
        return image, np.ones(image.shape[:2], np.uint8)  # a constant mask: masks and ROIs share one reader path

    def check_card(self, card: DatasetCard) -> None:
        if card.task not in ("roi-classification", "roi-retrieval"):
            raise ValueError(f"task {card.task} cannot use format image-folder: it holds ROI images labelled by folder")
        if card.mask.encoding != "from-group" or "group" not in card.layout.fields("images") or card.layout.masks is not None:
            raise ValueError("image-folder cards name the label by a {group} folder: mask encoding from-group, no layout.masks")
