"""Read a dataset described by a card: discover pairs, validate them, split, and resize.

Loaders are per on-disk *format*; ``png-pairs`` (an RGB image and a single-channel mask
of class indices per id) is the one the reference code consumes, and the one every
other format is converted to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness import constants
from harness.data.cards import DatasetCard
from harness.data.samples import materialise
from harness.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    ident: str
    image: Path
    mask: Path


def dataset_root(card: DatasetCard, data_dir: Path | None = None) -> Path:
    """Where the card's files are: ``<data_dir>/<card>``; built-in samples are generated there."""
    root = (data_dir or constants.DATA_DIR) / card.name
    if card.generator:
        return materialise(card, root)
    if not root.is_dir():
        raise DataError(f"dataset '{card.name}' not found at {root}", f"download it ({card.source.url}) and run 'pfmbench data prepare {card.name} --from <dir>'")
    return root


def discover(card: DatasetCard, root: Path) -> list[Sample]:
    """All (image, mask) pairs of the layout, sorted by id; missing masks and wrong counts are errors."""
    pattern = card.layout.images
    prefix, suffix = pattern.split("{id}")
    regex = re.compile("^" + re.escape(prefix) + "(?P<id>.+?)" + re.escape(suffix) + "$")
    samples = []
    for path in sorted(root.glob(pattern.replace("{id}", "*"))):
        match = regex.match(path.relative_to(root).as_posix())
        if not match:
            continue
        ident = match["id"]
        mask = root / card.layout.masks.replace("{id}", ident)
        if not mask.is_file():
            raise DataError(f"{card.name}: image {path.name} has no mask at {mask}")
        samples.append(Sample(ident, path, mask))
    if len(samples) != card.expected.files:
        raise DataError(f"{card.name}: found {len(samples)} image/mask pairs under {root}, the card expects {card.expected.files}")
    return samples


def split(card: DatasetCard, samples: list[Sample]) -> dict[str, list[Sample]]:
    """The reference split: ids shuffled with the card's seed, cut at the card's ratios (70/20/10)."""
    n = len(samples)
    order = np.random.RandomState(card.split.seed).permutation(n)
    n_train = int(round(n * card.split.ratios[0]))
    n_val = int(round(n * card.split.ratios[1]))
    if min(n_train, n_val, n - n_train - n_val) < 1:
        raise DataError(f"{card.name}: {n} samples are too few for a {list(card.split.ratios)} split")
    cuts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {name: [samples[i] for i in sorted(idx)] for name, idx in cuts.items()}


def read_pair(card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Image ``uint8 [H, W, 3]`` and mask ``uint8 [H, W]``, checked against the card."""
    try:
        image = np.asarray(Image.open(sample.image).convert("RGB"))
        mask_img = Image.open(sample.mask)
        mask = np.asarray(mask_img if mask_img.mode in ("L", "P", "I", "I;16") else mask_img.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{card.name}: cannot read {sample.ident}: {exc}", "replace the corrupt file from the original download") from exc
    if mask.ndim != 2:
        raise DataError(f"{card.name}: mask {sample.mask.name} has shape {mask.shape}, expected a single channel")
    if image.shape[:2] != mask.shape:
        raise DataError(f"{card.name}: image {sample.image.name} is {image.shape[1]}x{image.shape[0]} but its mask is {mask.shape[1]}x{mask.shape[0]}")
    values = np.unique(mask)
    bad = [int(v) for v in values if v >= card.num_classes and v != card.ignore_index]
    if bad:
        raise DataError(
            f"{card.name}: mask {sample.mask.name} has values {bad} outside the classes 0..{card.num_classes - 1} (and ignore {card.ignore_index})",
            "masks must hold class indices; remap the labels as the card's derivation says",
        )
    return image, mask.astype(np.uint8)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference val/test transform: image bilinear, mask nearest, to ``size x size``."""
    if image.shape[:2] == (size, size):
        return image, mask
    img = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    msk = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return img, msk


@dataclass
class SplitArrays:
    images: np.ndarray  # uint8 [N, S, S, 3]
    masks: np.ndarray  # uint8 [N, S, S]
    ids: list[str]


def load_split_arrays(card: DatasetCard, samples: list[Sample], size: int) -> SplitArrays:
    """Read, validate and resize a split into arrays (the small-data path used by the frozen strategy)."""
    images = np.empty((len(samples), size, size, 3), np.uint8)
    masks = np.empty((len(samples), size, size), np.uint8)
    for i, s in enumerate(samples):
        images[i], masks[i] = resize_pair(*read_pair(card, s), size)
    return SplitArrays(images, masks, [s.ident for s in samples])
