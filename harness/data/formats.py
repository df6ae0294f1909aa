"""Readers per on-disk format, and the mask rules that turn original annotations into class indices.

A reader returns the image as ``uint8 [H, W, 3]`` and the *raw* annotation; :func:`to_classes`
applies the card's :class:`~harness.data.cards.MaskRule`. Each raises :class:`DataError`
naming the file and the problem, so ``pfmbench data prepare`` can report the first bad
file of a download in one line.

Formats: ``image-mask`` (PNG/TIFF/BMP/JPEG image + mask image), ``mat`` (MATLAB ``.mat``
label files as in HoVer-Net's CoNSeP/Kumar/CPM releases and Lizard), ``npy`` (PanNuke and
CoNIC array files, one sample per row), ``xml-polygons`` (MoNuSeg/Aperio annotation XML)
and ``geojson-polygons`` (QuPath-style GeoJSON).
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from harness.data.cards import DatasetCard, MaskRule
from harness.errors import DataError

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


def _fail(card: DatasetCard, path: Path, problem: str, fix: str = "") -> DataError:
    return DataError(f"{card.name}: {path}: {problem}", fix or "replace the file from the original download, or remove the sample")


def read_image(card: DatasetCard, path: Path) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]``; truncated, non-image and unreadable files are one-line errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise _fail(card, path, "not an image file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _fail(card, path, f"unreadable or truncated image ({str(exc).splitlines()[0][:120]})") from None


def _read_mask_image(card: DatasetCard, path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA") and card.mask.channel is not None:
                return np.asarray(im)[..., card.mask.channel]
            if im.mode in ("RGB", "RGBA"):
                arr = np.asarray(im.convert("RGB"))
                if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                    raise _fail(card, path, "mask has 3 different colour channels; expected one channel of labels",
                                "save masks as single-channel label images (or set mask.channel in the card)")
                return arr[..., 0]
            if im.mode == "1":
                return np.asarray(im).astype(np.uint8)
            return np.asarray(im)
    except UnidentifiedImageError:
        raise _fail(card, path, "mask is not an image file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _fail(card, path, f"unreadable or truncated mask ({str(exc).splitlines()[0][:120]})") from None


def _read_mat(card: DatasetCard, path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError/TypeError/MatReadError on damaged files
        raise _fail(card, path, f"unreadable .mat file ({type(exc).__name__}: {str(exc)[:100]})") from None


def _mat_array(card: DatasetCard, path: Path, mat: dict[str, Any], key: str | None) -> np.ndarray:
    if key is None or key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise _fail(card, path, f".mat file has no array '{key}' (it has {keys})", "check that this is the dataset the card describes")
    return np.asarray(mat[key])


def _polygons_xml(path: Path) -> list[tuple[str, list[tuple[float, float]]]]:
    """MoNuSeg / Aperio ImageScope XML: Annotation > Regions > Region > Vertices > Vertex(X, Y)."""
    out = []
    for region in ET.parse(path).getroot().iter("Region"):
        pts = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        out.append((region.get("Text") or "", pts))
    return out


def _polygons_geojson(path: Path) -> list[tuple[str, list[tuple[float, float]]]]:
    """GeoJSON features (QuPath export): Polygon / MultiPolygon exteriors, class from properties.classification.name."""
    doc = json.loads(path.read_text())
    feats = doc["features"] if isinstance(doc, dict) and "features" in doc else doc
    out = []
    for f in feats:
        props = f.get("properties") or {}
        cls = props.get("classification", {}).get("name", "") if isinstance(props.get("classification"), dict) else str(props.get("classification", ""))
        geom = f["geometry"]
        rings = [geom["coordinates"][0]] if geom["type"] == "Polygon" else [p[0] for p in geom["coordinates"]]
        out.extend((cls, [tuple(map(float, pt[:2])) for pt in ring]) for ring in rings)
    return out


def _rasterise(card: DatasetCard, path: Path, shape: tuple[int, int], polygons) -> np.ndarray:
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for name, pts in polygons:
        if len(pts) < 3:
            continue
        if card.mask.values:
            if name not in card.mask.values:
                raise _fail(card, path, f"polygon class '{name}' is not in the card's mask.values {sorted(map(str, card.mask.values))}")
            value = card.mask.values[name]
        else:
            value = 1
        draw.polygon(pts, fill=value, outline=value)
    return np.asarray(canvas)


def read_sample(card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Image ``uint8 [H, W, 3]`` and mask ``uint8 [H, W]`` of class indices, checked against the card."""
    fmt = card.format
    if fmt == "npy":
        image, raw = _npy_row(card, sample)
    else:
        image = read_image(card, sample.image)
        if fmt == "image-folder":  # one label per image: a constant mask, so masks and ROIs share one reader
            raw = np.ones(image.shape[:2], np.uint8)
        elif fmt == "image-mask":
            raw = _read_mask_image(card, sample.mask)
        elif fmt == "mat":
            mat = _read_mat(card, sample.mask)
            if card.mask.encoding == "instance-class":
                raw = _instance_class(card, sample.mask, mat)
            else:
                raw = _mat_array(card, sample.mask, mat, card.mask.key)
        else:
            try:
                polys = _polygons_xml(sample.mask) if fmt == "xml-polygons" else _polygons_geojson(sample.mask)
            except (ET.ParseError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise _fail(card, sample.mask, f"unreadable annotation ({type(exc).__name__}: {str(exc)[:100]})") from None
            raw = _rasterise(card, sample.mask, image.shape[:2], polys)
    if raw.ndim == 3 and card.mask.encoding != "channels":
        raise _fail(card, sample.mask, f"mask has shape {raw.shape}; expected a single channel")
    if raw.shape[:2] != image.shape[:2]:
        raise _fail(card, sample.mask, f"mask is {raw.shape[1]}x{raw.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}",
                    "image and mask must come from the same sample, at the same size")
    return image, to_classes(card, sample, raw)


def _instance_class(card: DatasetCard, path: Path, mat: dict[str, Any]) -> np.ndarray:
    """Lizard: ``inst_map`` plus ``id`` (instance ids) and ``class`` (their classes, same order)."""
    inst = _mat_array(card, path, mat, card.mask.key)
    ids = _mat_array(card, path, mat, card.mask.id_key).ravel()
    classes = _mat_array(card, path, mat, card.mask.class_key).ravel()
    if len(ids) != len(classes):
        raise _fail(card, path, f"{len(ids)} instance ids but {len(classes)} classes")
    inst = inst.astype(np.int64)
    if inst.min() < 0:
        raise _fail(card, path, "inst_map has negative ids")
    lut = np.full(int(inst.max()) + 1, -1, np.int64)
    lut[0] = 0
    known = ids.astype(np.int64)
    lut[known[known <= inst.max()]] = classes.astype(np.int64)[known <= inst.max()]
    out = lut[inst]
    if (out < 0).any():
        missing = np.unique(inst[out < 0])[:5].tolist()
        raise _fail(card, path, f"instances {missing} of the instance map have no class")
    return out


_NPY_CACHE: dict[Path, np.ndarray] = {}


def _npy(card: DatasetCard, path: Path) -> np.ndarray:
    if path not in _NPY_CACHE:
        try:
            _NPY_CACHE.clear()  # one array file pair at a time: rows are read in file order
            _NPY_CACHE[path] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _fail(card, path, f"unreadable .npy file ({str(exc)[:100]})") from None
    return _NPY_CACHE[path]


def npy_rows(card: DatasetCard, path: Path) -> int:
    return int(_npy(card, path).shape[0])


def _npy_row(card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    images = _npy(card, sample.image)
    assert sample.row is not None
    img = np.asarray(images[sample.row])
    if img.ndim != 3 or img.shape[-1] != 3:
        raise _fail(card, sample.image, f"row {sample.row} has shape {img.shape}; expected [H, W, 3]")
    if img.dtype != np.uint8:  # PanNuke stores float64 in 0..255
        if img.min() < 0 or img.max() > 255:
            raise _fail(card, sample.image, f"row {sample.row} has values outside 0..255")
        img = img.astype(np.uint8)
    masks = _npy(card, sample.mask)
    if masks.shape[0] != images.shape[0]:
        raise _fail(card, sample.mask, f"{masks.shape[0]} mask rows but {images.shape[0]} image rows in {sample.image.name}")
    raw = np.asarray(masks[sample.row])
    if card.mask.channel is not None:
        raw = raw[..., card.mask.channel]
    return img, raw


def to_classes(card: DatasetCard, sample: Sample, raw: np.ndarray) -> np.ndarray:
    """Apply the card's mask rule; values outside the class set are one-line errors."""
    rule: MaskRule = card.mask
    enc = rule.encoding
    if enc == "channels":
        if raw.ndim != 3 or raw.shape[-1] != len(rule.channels):
            raise _fail(card, sample.mask, f"mask has shape {raw.shape}; the card expects {len(rule.channels)} channels")
        out = np.zeros(raw.shape[:2], np.int64)
        for ch, cls in enumerate(rule.channels):
            if cls is not None:
                out[raw[..., ch] > 0] = cls
    elif enc in ("binary",):
        out = (raw != 0).astype(np.int64)
    elif enc == "from-group":
        group = sample.fields.get("group", "")
        if group not in rule.groups:
            raise _fail(card, sample.mask, f"folder '{group}' is not one of the card's groups {sorted(rule.groups)}")
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
        raise _fail(card, sample.mask, f"label values {bad[:6]} are outside the classes 0..{card.num_classes - 1} (ignore {card.ignore_index})",
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
    """The true instance map of a sample: the release's own where it has one, else connected components.

    Own maps: ``inst_map`` in ``.mat`` labels, PanNuke's per-class instance channels, CoNIC's
    instance channel, one id per polygon, instance-id masks (more than two values). Only
    pixels of a non-background class keep an id.
    """
    inst: np.ndarray | None = None
    if card.format == "mat":
        mat = _read_mat(card, sample.mask)
        if "inst_map" in mat:
            inst = np.asarray(mat["inst_map"]).astype(np.int64)
    elif card.format == "npy":
        raw = np.asarray(_npy(card, sample.mask)[sample.row])
        if card.mask.encoding == "channels":
            inst = np.zeros(raw.shape[:2], np.int64)
            for ch, cls in enumerate(card.mask.channels):
                if cls is not None:
                    layer = raw[..., ch].astype(np.int64)
                    inst = np.where(layer > 0, layer + inst.max() + 1, inst) if (layer > 0).any() else inst
        elif raw.ndim == 3:
            inst = raw[..., 0].astype(np.int64)
    elif card.format in ("xml-polygons", "geojson-polygons"):
        polys = _polygons_xml(sample.mask) if card.format == "xml-polygons" else _polygons_geojson(sample.mask)
        canvas = Image.new("I", (classes.shape[1], classes.shape[0]), 0)
        draw = ImageDraw.Draw(canvas)
        for i, (_, pts) in enumerate(polys, 1):
            if len(pts) >= 3:
                draw.polygon(pts, fill=i, outline=i)
        inst = np.asarray(canvas).astype(np.int64)
    elif card.format == "image-mask" and card.mask.encoding == "binary":
        raw = _read_mask_image(card, sample.mask)
        if len(np.unique(raw)) > 2:
            inst = raw.astype(np.int64)
    if inst is None or inst.shape != classes.shape:
        inst = _components(classes)
    inst = np.where((classes > 0) & (classes != card.ignore_index), inst, 0)
    return inst
