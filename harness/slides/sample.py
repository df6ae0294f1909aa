"""``slides-sample``: small pyramidal TIFF slides cut from the real H&E image the project already ships.

Each slide is a 2048 px canvas of glass (bright, faintly noisy) holding two or three
irregular pieces of tissue, plus a speck of debris smaller than the tissue detector's
minimum area. A piece is a 2 x 2 mosaic of 512 px crops of histolytics' 1500 px HGSC image
(each rotated and flipped) seen through a rounded, ragged outline. A slide's class says
where its crops come from, using the image's own nucleus-type raster:

- ``nest``: crops where neoplastic nuclei are densest (the tumour nest);
- ``stroma``: crops where connective-tissue nuclei are densest.

Survival times follow the class (``nest`` cases shorter) with seeded noise and about a
third censored, so both slide tasks have something real to learn. Slides are written with
``tifffile`` as tiled, JPEG-compressed TIFF pyramids (3 levels) whose resolution tags say
0.5 µm per pixel; the MPP is declared, not measured (the source image carries none).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from harness.data.cards import DatasetCard

CANVAS = 2048
CROP = 512
PIECE = 2 * CROP
GLASS = 238
MPP = 0.5
#: Slides per class; every seventh case has two slides.
PER_CLASS = 14


def _crop_origins(types: np.ndarray, nucleus_type: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of the ``count`` CROP crops (stride 64) richest in ``nucleus_type`` nuclei."""
    scored = []
    for y in range(0, types.shape[0] - CROP + 1, 64):
        for x in range(0, types.shape[1] - CROP + 1, 64):
            scored.append((float((types[y:y + CROP, x:x + CROP] == nucleus_type).mean()), y, x))
    scored.sort(reverse=True)
    return [(y, x) for _, y, x in scored[:count]]


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular tissue outline: a rounded square (superellipse) with a ragged, noisy edge."""
    yy, xx = np.abs(np.mgrid[:size, :size] - (size - 1) / 2) / (size / 2)
    shape = 1 - (yy ** 4 + xx ** 4) ** 0.25
    noise = ndimage.gaussian_filter(rng.standard_normal((size // 16, size // 16)), 1.5)
    noise = np.kron(noise / (noise.std() + 1e-8), np.ones((16, 16)))[:size, :size]
    return (shape + 0.04 * noise) > 0.08


def slide_image(rng: np.random.Generator, image: np.ndarray, origins: list[tuple[int, int]]) -> np.ndarray:
    """One slide's level 0: glass, 2-3 tissue pieces of crops from ``origins``, and a speck of debris."""
    canvas = np.clip(rng.normal(GLASS, 2.0, (CANVAS, CANVAS, 3)), 0, 255).astype(np.uint8)
    slots = rng.permutation([(r, c) for r in range(2) for c in range(2)])[: rng.integers(2, 4)]
    for r, c in slots:
        piece = np.empty((PIECE, PIECE, 3), np.uint8)
        for i in range(4):
            y, x = origins[rng.integers(len(origins))]
            crop = np.rot90(image[y:y + CROP, x:x + CROP], rng.integers(4))
            piece[(i // 2) * CROP:(i // 2 + 1) * CROP, (i % 2) * CROP:(i % 2 + 1) * CROP] = crop[:, ::-1] if rng.random() < 0.5 else crop
        keep = _blob(rng, PIECE)
        region = canvas[r * PIECE:(r + 1) * PIECE, c * PIECE:(c + 1) * PIECE]
        region[keep] = piece[keep]
    cy, cx = rng.integers(40, CANVAS - 40, 2)
    canvas[cy - 6:cy + 6, cx - 6:cx + 6] = (120, 60, 110)  # debris: far below the minimum tissue area
    return canvas


def write_pyramid(path: Path, level0: np.ndarray, mpp: float = MPP, levels: int = 3) -> None:
    """A tiled (256 px), JPEG-compressed TIFF pyramid with resolution tags; OpenSlide reads it as generic-tiff."""
    import tifffile
    from PIL import Image

    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            f = 2 ** level
            data = level0 if f == 1 else np.asarray(Image.fromarray(level0).reduce(f))
            tif.write(data, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)), resolutionunit="CENTIMETER", subfiletype=0 if level == 0 else 1)


def slides_sample(root: Path, card: DatasetCard, image: np.ndarray, types: np.ndarray) -> None:
    """Write ``slides/<id>.tiff`` and ``labels.csv`` (case, slide, class, survival months, event) into ``root``, from the
    H&E ``image`` and its nucleus-type raster ``types`` (:func:`harness.data.samples.hgsc_nest`)."""
    rng = np.random.default_rng(card.split.seed)
    origins = {"nest": _crop_origins(types, 3, 8), "stroma": _crop_origins(types, 1, 8)}
    (root / "slides").mkdir()
    rows: list[dict[str, object]] = []
    case = 0
    for label in ("nest", "stroma"):
        n = 0
        while n < PER_CLASS:
            slides = 2 if case % 7 == 0 and n + 2 <= PER_CLASS else 1
            months = rng.gamma(2.0, 12.0 if label == "nest" else 30.0)
            event = int(rng.random() < 0.65)
            for _ in range(slides):
                slide_id = f"S{len(rows):03d}"
                write_pyramid(root / "slides" / f"{slide_id}.tiff", slide_image(rng, image, origins[label]))
                rows.append({"case_id": f"C{case:03d}", "slide_id": slide_id, "label": label, "months": f"{months:.1f}", "event": event})
                n += 1
            case += 1
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
