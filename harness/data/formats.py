"""From a sample on disk to class indices: the card's reader (:mod:`harness.data.readers`), then its mask rule.

A reader returns the image and the *raw* annotation; :func:`to_classes` applies the
card's :class:`~harness.data.cards.MaskRule`. Every problem is a :class:`DataError`
naming the file, so ``pfmbench data prepare`` can report the first bad file of a
download in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data.cards import DatasetCard, MaskRule
from harness.data.readers import IMAGE_SUFFIXES, Sample, fail, get_reader, read_image

__all__ = ["IMAGE_SUFFIXES", "Sample", "read_image", "read_instances", "read_sample", "sample_rows", "to_classes"]


def read_sample(card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Image ``uint8 [H, W, 3]`` and mask ``uint8 [H, W]`` of class indices, checked against the card."""
    image, raw = get_reader(card.format).read(card, sample)
    if raw.ndim == 3 and card.mask.encoding != "channels":
        raise fail(card, sample.mask, f"mask has shape {raw.shape}; expected a single channel")
    if raw.shape[:2] != image.shape[:2]:
        raise fail(card, sample.mask, f"mask is {raw.shape[1]}x{raw.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}",
                   "image and mask must come from the same sample, at the same size")
    return image, to_classes(card, sample, raw)


def sample_rows(card: DatasetCard, path: Path) -> int | None:
    """Samples in one matched file (array formats), or None for one per file."""
    return get_reader(card.format).rows(card, path)


def to_classes(card: DatasetCard, sample: Sample, raw: np.ndarray) -> np.ndarray:
    """Apply the card's mask rule; values outside the class set are one-line errors."""
    rule: MaskRule = card.mask
    enc = rule.encoding
    if enc == "channels":
        if raw.ndim != 3 or raw.shape[-1] != len(rule.channels):
            raise fail(card, sample.mask, f"mask has shape {raw.shape}; the card expects {len(rule.channels)} channels")
        out = np.zeros(raw.shape[:2], np.int64)
        for ch, cls in enumerate(rule.channels):
            if cls is not None:
                out[raw[..., ch] > 0] = cls
    elif enc in ("binary",):
        out = (raw != 0).astype(np.int64)
    elif enc == "from-group":
        group = sample.fields.get("group", "")
        if group not in rule.groups:
            raise fail(card, sample.mask, f"folder '{group}' is not one of the card's groups {sorted(rule.groups)}")
        out = np.where(raw != 0, rule.groups[group], 0)
    else:  # index, instance-class, polygons (already class indices or remapped below)
        out = raw.astype(np.int64)
        if rule.values and enc != "polygons":
            remapped = out.copy()
            for src, dst in rule.values.items():
                remapped[out == int(src)] = dst
            out = remapped
    values = np.unique(out)
    bad = [int(v) for v in values if not (0 <= v < card.num_classes or v == card.ignore_index)]
    if bad:
        raise fail(card, sample.mask, f"label values {bad[:6]} are outside the classes 0..{card.num_classes - 1} (ignore {card.ignore_index})",
                    "the mask does not follow the card's encoding; check the download against the card")
    return out.astype(np.uint8)


def _components(classes: np.ndarray) -> np.ndarray:
    """Connected components of each class (class 0 = background), as one instance map."""
    from scipy import ndimage

    inst = np.zeros(classes.shape, np.int32)
    offset = 0
    for c in np.unique(classes):
        if c == 0 or c == 255:
            continue
        lab, n = ndimage.label(classes == c)
        inst[lab > 0] = lab[lab > 0] + offset
        offset += n
    return inst


def read_instances(card: DatasetCard, sample: Sample, classes: np.ndarray) -> np.ndarray:
    """The true instance map of a sample: the release's own where the reader has one, else connected components.

    Own maps: ``inst_map`` in ``.mat`` labels, PanNuke's per-class instance channels, CoNIC's
    instance channel, one id per polygon, instance-id masks (more than two values). Only
    pixels of a non-background class keep an id.
    """
    inst = get_reader(card.format).instances(card, sample, classes)
    if inst is None or inst.shape != classes.shape:
        inst = _components(classes)
    return np.where((classes > 0) & (classes != card.ignore_index), inst, 0)
