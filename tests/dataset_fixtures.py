"""Write tiny datasets in exactly the layout and annotation format of a card's original release.

``write_fixture(card, root)`` is driven by the card: the same layout patterns, file
types and raw encodings a user's download has (HoVer-Net ``.mat`` type maps with the raw
7 CoNSeP codes, Lizard instance maps with id/class vectors, PanNuke's 6-channel
instance arrays, MoNuSeg XML polygons, GlaS ``_anno.bmp`` instance maps beside the
images...), at a few dozen pixels per side. It returns the class mask each sample must
load as, so tests compare pixel for pixel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from harness.data.cards import DatasetCard

#: Placeholder values when the card does not name them.
_DEFAULTS = {"group": ["01", "02", "03"], "split": ["2.validation", "3.testing"], "part": None}


def _values(card: DatasetCard, name: str) -> list[str]:
    if name == "split" and card.split.official:
        return list(card.split.official)
    if name == "group" and card.mask.groups:
        return list(card.mask.groups)
    return _DEFAULTS.get(name) or ["1", "2"]


def _rectangles(rng: np.random.Generator, h: int, w: int, classes: list[int]) -> list[tuple[int, int, int, int, int]]:
    out = []
    for _ in range(int(rng.integers(2, 6))):
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        y1, x1 = int(rng.integers(y0 + 1, min(h, y0 + 12))), int(rng.integers(x0 + 1, min(w, x0 + 12)))
        out.append((y0, x0, y1, x1, int(rng.choice(classes))))
    return out


def _class_and_instances(h: int, w: int, rects) -> tuple[np.ndarray, np.ndarray]:
    cls = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.int32)
    for i, (y0, x0, y1, x1, c) in enumerate(rects, 1):  # inclusive corners, as a polygon fill draws them
        cls[y0:y1 + 1, x0:x1 + 1] = c
        inst[y0:y1 + 1, x0:x1 + 1] = i
    return cls, inst


def _raw_index(card: DatasetCard, cls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class mask -> the raw codes of the release (inverting the card's value map, merges included)."""
    if not card.mask.values:
        return cls.astype(np.int32)
    raw = cls.astype(np.int32).copy()
    for c in np.unique(cls):
        sources = [int(k) for k, v in card.mask.values.items() if v == c]
        if sources:
            sel = cls == c
            raw[sel] = rng.choice(sources, size=int(sel.sum()))
    return raw


def _xml(rects) -> str:
    regions = "".join(
        f'<Region Id="{i}" Text=""><Vertices><Vertex X="{x0}" Y="{y0}" /><Vertex X="{x1}" Y="{y0}" />'
        f'<Vertex X="{x1}" Y="{y1}" /><Vertex X="{x0}" Y="{y1}" /></Vertices></Region>'
        for i, (y0, x0, y1, x1, _) in enumerate(rects, 1)
    )
    return f'<?xml version="1.0"?><Annotations><Annotation Id="1"><Regions>{regions}</Regions></Annotation></Annotations>'


def _geojson(card: DatasetCard, rects) -> str:
    names = {v: str(k) for k, v in card.mask.values.items()}
    feats = [{"type": "Feature", "properties": {"classification": {"name": names.get(c, "")}},
              "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}}
             for (y0, x0, y1, x1, c) in rects]
    return json.dumps({"type": "FeatureCollection", "features": feats})


def write_fixture(card: DatasetCard, root: Path, n: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``n`` samples (default: the card's expected count) under ``root``; return id -> class mask."""
    rng = np.random.default_rng(seed)
    n = n or card.expected.files or 12
    k = card.num_classes
    fields = [f for f in dict.fromkeys(card.layout.fields("images")) if f != "id"]
    combos = [{f: _values(card, f)[i % len(_values(card, f))] for f in fields} for i in range(max(1, len(_values(card, "split")) if "split" in fields else 1))]
    if "part" in fields:  # Lizard: lizard_images1/Lizard_Images1
        for c in combos:
            c["part"] = c.get("group", "1")
    expected: dict[str, np.ndarray] = {}

    if card.format == "npy":
        per = np.array_split(np.arange(n), len(combos))
        for combo, rows in zip(combos, per):
            h = w = 16
            images = rng.integers(0, 256, (len(rows), h, w, 3)).astype(np.float64)
            if card.mask.encoding == "channels":
                masks = np.zeros((len(rows), h, w, len(card.mask.channels)), np.float64)
            else:
                masks = np.zeros((len(rows), h, w, 2), np.int32)
            prefix = "-".join(combo[f] for f in fields)
            for j in range(len(rows)):
                cls, inst = _class_and_instances(h, w, _rectangles(rng, h, w, list(range(1, k))))
                if card.mask.encoding == "channels":
                    for ch, c in enumerate(card.mask.channels):
                        masks[j, ..., ch] = np.where(cls == c, inst, 0) if c is not None else (cls == 0)
                else:
                    masks[j, ..., 0], masks[j, ..., card.mask.channel] = inst, cls
                expected[f"{prefix}-{j:05d}" if prefix else f"{j:05d}"] = cls
            img_path = root / card.layout.images.format(**combo)
            img_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(img_path, images if card.mask.encoding == "channels" else images.astype(np.uint8))
            mask_path = root / card.layout.masks.format(**combo)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(mask_path, masks)
        return expected

    for i in range(n):
        combo = dict(combos[i % len(combos)])
        if "group" in fields:
            groups = _values(card, "group")
            combo["group"] = groups[i % len(groups)]
            if "part" in fields:
                combo["part"] = combo["group"]
        ident = f"s{i:04d}"
        h, w = (24, 32) if i % 2 else (32, 24)
        if card.mask.encoding == "from-group":
            classes = [card.mask.groups[combo["group"]]]
        elif card.mask.encoding in ("binary", "polygons") and not card.mask.values:
            classes = [1]
        else:
            classes = list(range(1, k))
        rects = _rectangles(rng, h, w, classes)
        cls, inst = _class_and_instances(h, w, rects)
        img_path = root / card.layout.images.format(id=ident, **combo)
        mask_path = root / card.layout.masks.format(id=ident, **combo)
        for p in (img_path, mask_path):
            p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_path)
        enc = card.mask.encoding
        if card.format == "image-mask":
            if enc in ("binary", "from-group"):
                raw = np.where(cls > 0, 255, 0) if i % 2 == 0 or enc == "from-group" else inst
            else:
                raw = _raw_index(card, cls, rng)
            raw = raw.astype(np.uint8)
            if card.mask.channel is not None:
                rgb = np.zeros((h, w, 3), np.uint8)
                rgb[..., card.mask.channel] = raw
                rgb[..., (card.mask.channel + 1) % 3] = (inst * 7 % 256).astype(np.uint8)
                Image.fromarray(rgb).save(mask_path)
            else:
                Image.fromarray(raw, mode="L").save(mask_path)
        elif card.format == "mat":
            if enc == "instance-class":
                ids = np.arange(1, len(rects) + 1)[:, None]
                savemat(mask_path, {card.mask.key: inst, card.mask.id_key: ids,
                                    card.mask.class_key: np.array([[r[4]] for r in rects]), "centroid": np.zeros((len(rects), 2))})
            elif enc == "binary":
                savemat(mask_path, {card.mask.key: inst})
            else:
                savemat(mask_path, {"inst_map": inst, card.mask.key: _raw_index(card, cls, rng)})
        elif card.format == "xml-polygons":
            mask_path.write_text(_xml(rects))
        elif card.format == "geojson-polygons":
            mask_path.write_text(_geojson(card, rects))
        named = {**combo, "id": ident}  # the loader's id: the fields that name the annotation, plus the split
        order = [f for f in dict.fromkeys(card.layout.fields("images")) if f != "ext"]
        expected["/".join(named[f] for f in order if f in card.layout.fields("masks") or f == "split")] = cls
    return expected
