"""Find, split and read the samples of a dataset described by a card.

Discovery is driven by the card's layout patterns (see :class:`~harness.data.cards.Layout`);
reading and label conversion are per on-disk format (:mod:`harness.data.formats`). Every
problem is a :class:`DataError` that names the file, so a bad download is reported in
one line before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
from PIL import Image

from harness import constants
from harness.data.cards import DatasetCard
from harness.data.formats import IMAGE_SUFFIXES, Sample, read_instances, read_sample, sample_rows
from harness.data.samples import materialise
from harness.errors import DataError

SPLITS = ("train", "val", "test")
#: Written by ``pfmbench data prepare --from <dir>``: where a user's download lives.
SOURCE_FILE = "source.json"

__all__ = ["SPLITS", "OriginalSplit", "Sample", "SplitArrays", "dataset_root", "discover", "load_originals", "load_split_arrays",
           "read_pair", "resize_pair", "split"]


def prepared_dir(card: DatasetCard, data_dir: Path | None = None) -> Path:
    """``<data_dir>/<card>``: the index, preview and source pointer of a prepared dataset."""
    return (data_dir or constants.DATA_DIR) / card.name


def dataset_root(card: DatasetCard, data_dir: Path | None = None) -> Path:
    """Where the card's files are: generated for built-in samples, else the prepared download."""
    here = prepared_dir(card, data_dir)
    if card.generator:
        return materialise(card, here)
    pointer = here / SOURCE_FILE
    if pointer.is_file():
        root = Path(json.loads(pointer.read_text())["root"])
        if root.is_dir():
            return root
        raise DataError(f"dataset '{card.name}' was prepared from {root}, which no longer exists", f"run 'pfmbench data prepare {card.name} --from <dir>' again")
    raise DataError(f"dataset '{card.name}' is not prepared", f"download it ({card.source.url}) and run 'pfmbench data prepare {card.name} --from <dir>'")


def _pattern(pattern: str) -> tuple[re.Pattern[str], str]:
    """A layout pattern as a regex over relative POSIX paths, and as a glob."""
    regex, seen = "", set()
    for part in re.split(r"({[a-z_]+})", pattern):
        if not part.startswith("{"):
            regex += re.escape(part)
            continue
        name = part[1:-1]
        if name in seen:  # the same placeholder again must repeat the same text
            regex += f"(?P={name})"
        elif name == "ext":
            regex += "(?P<ext>(?i:{}))".format("|".join(s[1:] for s in IMAGE_SUFFIXES))
        else:
            regex += f"(?P<{name}>[^/]+?)"
        seen.add(name)
    glob_parts = ("*" if part.startswith("{") else glob_escape(part) for part in re.split(r"({[a-z_]+})", pattern))
    return re.compile(regex), "".join(glob_parts)


def _expected_example(card: DatasetCard) -> str:
    return card.layout.images.replace("{ext}", "png").replace("{", "<").replace("}", ">")


def discover(card: DatasetCard, root: Path, check_count: bool = True) -> list[Sample]:
    """All samples of the layout, sorted by id; a missing mask, a duplicate id or a wrong count is an error."""
    if not root.is_dir():
        raise DataError(f"{card.name}: {root} is not a directory", "pass the folder the download was unpacked into")
    if not any(root.iterdir()):
        raise DataError(f"{card.name}: {root} is empty", f"unpack the download ({card.source.url}) into it")
    regex, glob = _pattern(card.layout.images)
    found = sorted(root.glob(glob))
    skip = re.compile(card.layout.exclude) if card.layout.exclude else None
    matches: list[tuple[Path, re.Match[str]]] = []
    for p in found:
        rel = p.relative_to(root).as_posix()
        m = regex.fullmatch(rel) if p.is_file() else None
        if m and not (skip and skip.search(rel)):
            matches.append((p, m))
    if not matches:
        raise DataError(
            f"{card.name}: no file under {root} matches the layout '{card.layout.images}'",
            f"the card expects files like {root}/{_expected_example(card)}; point --from at the folder that holds them",
        )
    samples: list[Sample] = []
    seen: dict[str, Path] = {}
    for path, m in matches:
        fields = {k: v for k, v in m.groupdict().items()}
        mask = root / card.layout.masks.format(**fields) if card.layout.masks else path
        if not mask.is_file():
            raise DataError(f"{card.name}: {path}: no mask at {mask}", "restore the missing annotation, or remove the image")
        all_fields = {k: v for k, v in fields.items() if k != "ext"}
        # A sample is named by what names its annotation: two images for one mask are duplicates.
        key_fields = {k: v for k, v in all_fields.items() if k in card.layout.fields("masks") or k == "split" or not card.layout.masks}
        rows = sample_rows(card, path)
        if rows is not None:  # an array file: one sample per row
            prefix = "-".join(key_fields.values())
            samples += [Sample(f"{prefix}-{i:05d}" if prefix else f"{i:05d}", path, mask, all_fields, i) for i in range(rows)]
            continue
        ident = "/".join(key_fields.values())
        if ident in seen:
            raise DataError(f"{card.name}: {path}: duplicate sample id '{ident}' (also {seen[ident]})", "keep one copy of each image")
        seen[ident] = path
        samples.append(Sample(ident, path, mask, all_fields))
    if check_count and card.expected.files is not None and len(samples) != card.expected.files:
        raise DataError(
            f"{card.name}: found {len(samples)} samples under {root}, the card expects {card.expected.files}",
            "check that the download is complete (or that --from points at the whole dataset)",
        )
    return samples


def _cut(n: int, ratios: tuple[float, ...], seed: int) -> list[np.ndarray]:
    order = np.random.RandomState(seed).permutation(n)
    bounds = np.cumsum([int(round(n * r)) for r in ratios[:-1]])
    return np.split(order, bounds)


def split(card: DatasetCard, samples: list[Sample]) -> dict[str, list[Sample]]:
    """The card's split: pooled and seeded (70/20/10 by default), or the release's own."""
    rule = card.split
    if rule.rule == "seeded":
        parts = _cut(len(samples), rule.ratios, rule.seed)
        out = {name: [samples[i] for i in sorted(idx)] for name, idx in zip(SPLITS, parts)}
    else:
        out = {name: [] for name in SPLITS}
        for s in samples:
            value = s.fields.get("split", "")
            if value not in rule.official:
                raise DataError(f"{card.name}: {s.image}: split folder '{value}' is not in the card's official split {sorted(rule.official)}")
            out[rule.official[value]].append(s)
        if not out["val"]:
            train = out["train"]
            share = rule.ratios[1] / (rule.ratios[0] + rule.ratios[1])
            tr, va = _cut(len(train), (1 - share, share), rule.seed)
            out["train"], out["val"] = [train[i] for i in sorted(tr)], [train[i] for i in sorted(va)]
    small = [name for name, part in out.items() if not part]
    if small:
        raise DataError(f"{card.name}: {len(samples)} samples leave the {'/'.join(small)} split empty", "the dataset is too small for this split")
    return out


def read_pair(card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Image ``uint8 [H, W, 3]`` and mask ``uint8 [H, W]`` of class indices, checked against the card."""
    return read_sample(card, sample)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int, method: str = "pil") -> tuple[np.ndarray, np.ndarray]:
    """The val/test transform: image bilinear, mask nearest, to ``size x size``.

    ``cv2`` is the reference's (albumentations ``Resize``: OpenCV linear, no antialiasing,
    so a large downscale aliases); ``pil`` filters over the whole footprint when it shrinks.
    Masks are nearest-neighbour either way.
    """
    if image.shape[:2] == (size, size):
        return image, mask
    if method == "cv2":
        import cv2

        return (cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR),
                cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))
    img = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    msk = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return img, msk


@dataclass
class SplitArrays:
    images: np.ndarray  # uint8 [N, S, S, 3]
    masks: np.ndarray  # uint8 [N, S, S]
    ids: list[str]
    instances: np.ndarray | None = None  # int [N, S, S], cards with instances only


def load_split_arrays(card: DatasetCard, samples: list[Sample], size: int, resize: str = "pil") -> SplitArrays:
    """Read, validate and resize a split into arrays (the small-data path used by the frozen strategy).

    For cards with instances, the true instance maps are resized too (nearest neighbour).
    """
    images = np.empty((len(samples), size, size, 3), np.uint8)
    masks = np.empty((len(samples), size, size), np.uint8)
    instances = np.empty((len(samples), size, size), np.int64) if card.instances else None
    for i, s in enumerate(samples):
        image, mask = read_pair(card, s)
        images[i], masks[i] = resize_pair(image, mask, size, resize)
        if instances is not None:
            inst = read_instances(card, s, mask)
            instances[i] = np.asarray(Image.fromarray(inst.astype(np.int32)).resize((size, size), Image.Resampling.NEAREST))
    return SplitArrays(images, masks, [s.ident for s in samples], instances)


@dataclass
class OriginalSplit:
    """A split at the original resolution (sizes differ per image): what ``slide`` inference scores."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    instances: list[np.ndarray] | None


def load_originals(card: DatasetCard, samples: list[Sample]) -> OriginalSplit:
    images, masks, instances = [], [], []
    for s in samples:
        image, mask = read_pair(card, s)
        images.append(image)
        masks.append(mask)
        if card.instances:
            instances.append(read_instances(card, s, mask))
    return OriginalSplit(images, masks, instances if card.instances else None)
