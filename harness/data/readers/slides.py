"""``slides``: whole-slide images with a label or survival table (the card's ``slides`` section).

A slide is not one sample of pixels: :mod:`harness.slides` tiles it and reads tiles at the
card's resolution. This reader only checks that a card declaring the format is a slide card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.data.readers import register
from harness.data.readers.base import Reader, Sample
from harness.errors import DataError

if TYPE_CHECKING:
    from harness.data.cards import DatasetCard


@register
class SlidesReader(Reader):
    formats = ("slides",)

    def check_card(self, card: DatasetCard) -> None:
        if card.task not in ("wsi-classification", "wsi-survival"):
            raise ValueError(f"task {card.task} cannot use format slides: it holds whole slides (wsi-classification, wsi-survival)")
        if card.slides is None:
            raise ValueError("format slides needs a slides section (the label or survival table and the tiling)")
        if "id" not in card.layout.fields("images") or card.layout.masks is not None:
            raise ValueError("a slide card's layout.images names the slide file with {id} = the table's slide id, and has no masks")
        if card.task == "wsi-classification" and not card.slides.label_column:
            raise ValueError("a wsi-classification card needs slides.label_column")
        if card.task == "wsi-survival" and not card.slides.survival:
            raise ValueError("a wsi-survival card needs slides.time_column and slides.event_column")

    def read(self, card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        raise DataError(f"{card.name}: slides are tiled, not read whole", f"pfmbench slides tile {card.name}")
