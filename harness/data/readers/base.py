"""What every reader shares: the sample record, the reader interface, image decoding and the one-line error."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.errors import DataError

if TYPE_CHECKING:
    from harness.data.cards import DatasetCard

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Sample:
    """One image/annotation pair of a download; ``row`` indexes array files (npy).

    For image-folder (ROI) cards ``mask`` is the image itself: the label is its ``{group}`` folder.
    """

    ident: str
    image: Path
    mask: Path
    fields: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    row: int | None = None


def fail(card: DatasetCard, path: Path, problem: str, fix: str = "") -> DataError:
    """The one-line error of a bad file: the card, the file, what is wrong, and what to do."""
    return DataError(f"{card.name}: {path}: {problem}", fix or "replace the file from the original download, or remove the sample")


def read_image(card: DatasetCard, path: Path) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]``; truncated, non-image, oversized and unreadable files are one-line errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    raise fail(card, path, f"{im.mode} image: 16-bit or float pixels, not 8-bit RGB",
                               "convert the image to 8-bit RGB (the release's own 8-bit files, or a tone mapping you choose)")
                return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise fail(card, path, "not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise fail(card, path, f"image larger than {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb, or a whole slide)",
                   "tile the image first; pfmbench reads tiles, not whole slides") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise fail(card, path, f"unreadable or truncated image ({str(exc).splitlines()[0][:120]})") from None


class Reader:
    """One on-disk format. Subclasses name their ``formats`` and implement :meth:`read`."""

    formats: ClassVar[tuple[str, ...]] = ()

    def read(self, card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """The image ``uint8 [H, W, 3]`` and the raw annotation (before the card's mask rule)."""
        raise NotImplementedError

    def instances(self, card: DatasetCard, sample: Sample, classes: np.ndarray) -> np.ndarray | None:
        """The release's own instance map, or None (connected components of ``classes`` are used)."""
        return None

    def rows(self, card: DatasetCard, path: Path) -> int | None:
        """Samples in one matched file (array formats), or None for one sample per file."""
        return None

    def check_card(self, card: DatasetCard) -> None:
        """Raise ValueError if the card's layout or mask rule cannot work with this format."""
        if card.task != "segmentation":
            raise ValueError(f"task {card.task} cannot use format {card.format}: ROI cards (one label per image) use image-folder, "
                             "slide cards use slides")
        if card.layout.masks is None:
            raise ValueError(f"format {card.format} needs layout.masks")
        if "id" not in card.layout.fields("images"):
            raise ValueError("layout.images must contain {id}")
