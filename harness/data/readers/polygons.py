"""``xml-polygons`` (MoNuSeg / Aperio ImageScope XML) and ``geojson-polygons`` (QuPath GeoJSON): outlines rasterised to masks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from harness.data.readers import register
from harness.data.readers.base import Reader, Sample, fail, read_image

if TYPE_CHECKING:
    from harness.data.cards import DatasetCard

Polygon = tuple[str, list[tuple[float, float]]]


def _xml(path: Path) -> list[Polygon]:
    """Annotation > Regions > Region > Vertices > Vertex(X, Y)."""
    out: list[Polygon] = []
    for region in ET.parse(path).getroot().iter("Region"):
        pts = [(float(v.get("X", "nan")), float(v.get("Y", "nan"))) for v in region.iter("Vertex")]
        out.append((region.get("Text") or "", pts))
    return out


def _geojson(path: Path) -> list[Polygon]:
    """Polygon / MultiPolygon exteriors, class from ``properties.classification.name``."""
    doc = json.loads(path.read_text())
    feats = doc["features"] if isinstance(doc, dict) and "features" in doc else doc
    out: list[Polygon] = []
    for f in feats:
        props = f.get("properties") or {}
        cls = props.get("classification", {}).get("name", "") if isinstance(props.get("classification"), dict) else str(props.get("classification", ""))
        geom = f["geometry"]
        rings = [geom["coordinates"][0]] if geom["type"] == "Polygon" else [p[0] for p in geom["coordinates"]]
        out.extend((cls, [(float(pt[0]), float(pt[1])) for pt in ring]) for ring in rings)
    return out


def _draw(shape: tuple[int, ...], polygons: Iterable[tuple[int, list[tuple[float, float]]]], mode: str) -> np.ndarray:
    canvas = Image.new(mode, (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for value, pts in polygons:
        if len(pts) >= 3:
            draw.polygon(pts, fill=value, outline=value)
    return np.asarray(canvas)


@register
class PolygonReader(Reader):
    formats = ("xml-polygons", "geojson-polygons")

    def polygons(self, card: DatasetCard, sample: Sample, shape: tuple[int, ...]) -> list[Polygon]:
        """The sample's outlines; unreadable files and vertices outside the image are one-line errors."""
        try:
            polys = _xml(sample.mask) if card.format == "xml-polygons" else _geojson(sample.mask)
        except (ET.ParseError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise fail(card, sample.mask, f"unreadable annotation ({type(exc).__name__}: {str(exc)[:100]})") from None
        h, w = shape[:2]
        for name, pts in polys:
            outside = [(x, y) for x, y in pts if not (-1 <= x <= w + 1 and -1 <= y <= h + 1)]  # a pixel of slack for edge-drawn outlines
            if outside:
                raise fail(card, sample.mask, f"polygon '{name}' has a vertex at {outside[0]}, outside the {w}x{h} image",
                           "the annotation belongs to another image, or to the image at another magnification")
        return polys

    def read(self, card: DatasetCard, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(card, sample.image)
        values = []
        for name, pts in self.polygons(card, sample, image.shape):
            if card.mask.values and name not in card.mask.values:
                raise fail(card, sample.mask, f"polygon class '{name}' is not in the card's mask.values {sorted(map(str, card.mask.values))}")
            values.append((card.mask.values[name] if card.mask.values else 1, pts))
        return image, _draw(image.shape, values, "L")

    def instances(self, card: DatasetCard, sample: Sample, classes: np.ndarray) -> np.ndarray | None:
        polys = self.polygons(card, sample, classes.shape)
        return _draw(classes.shape, ((i, pts) for i, (_, pts) in enumerate(polys, 1)), "I").astype(np.int64)
