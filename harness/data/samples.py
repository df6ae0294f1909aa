"""Built-in datasets that need no download: real H&E tiles from a PyPI package, and synthetic tissue.

Each generator writes a dataset in the ``png-pairs`` layout (``images/{id}.png``,
``masks/{id}.png`` with class indices) into a fresh directory; :func:`materialise`
writes into a temporary sibling and renames it into place, so a crash never leaves a
half-written dataset behind.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.cards import DatasetCard
from harness.errors import DataError
from harness.util.atomic import atomic_directory

HISTOLYTICS_VERSION = "0.3.0"
TILE = 250


def _histolytics_file(relpath: str) -> Path:
    """Path of a data file inside the installed ``histolytics`` wheel, without importing it.

    (Importing histolytics pulls geopandas, numba and more; we only need its data files.)
    """
    try:
        dist = importlib.metadata.distribution("histolytics")
    except importlib.metadata.PackageNotFoundError as exc:
        raise DataError(
            "the nuclei-sample tiles come from the 'histolytics' package, which is not installed",
            f"run 'pip install --no-deps histolytics=={HISTOLYTICS_VERSION}' (or 'make setup')",
        ) from exc
    path = Path(str(dist.locate_file(relpath)))
    if not path.is_file():
        raise DataError(f"histolytics {dist.version} does not ship {relpath}", f"install histolytics=={HISTOLYTICS_VERSION}")
    return path


def hgsc_nest() -> tuple[np.ndarray, np.ndarray]:
    """histolytics' 1500 px HGSC tumour-nest H&E (RGB) and its nucleus-type raster (0 background, 1 connective,
    2 inflammatory, 3 neoplastic): the real image every built-in sample is cut from."""
    image = np.asarray(Image.open(_histolytics_file("histolytics/data/hgsc_nest.jpg")).convert("RGB"))
    types = np.load(_histolytics_file("histolytics/data/hgsc_nest_type_mask.npz"))["nuc_raster"]
    return image, types


def _write_pair(root: Path, ident: str, image: np.ndarray, mask: np.ndarray) -> None:
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{ident}.png", optimize=False)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / f"{ident}.png", optimize=False)


def hgsc_nest_tiles(root: Path, card: DatasetCard) -> None:
    """36 tiles of 250 px cut on a 6x6 grid from histolytics' 1500 px HGSC tumour-nest image.

    The type raster holds 0 background, 1 connective, 2 inflammatory, 3 neoplastic
    (checked against the class names of the package's nuclei polygons).
    """
    image, types = hgsc_nest()
    if image.shape[:2] != types.shape:
        raise DataError(f"histolytics image {image.shape[:2]} and type mask {types.shape} differ in size")
    n = image.shape[0] // TILE
    for r in range(n):
        for c in range(n):
            sl = np.s_[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
            _write_pair(root, f"hgsc_r{r}c{c}", image[sl], types[sl])


ROI_TILE = 100
#: A tile is labelled only when nuclei cover this share of it ...
ROI_MIN_NUCLEI = 0.03
#: ... and one nucleus type holds this share of the nucleus pixels.
ROI_MIN_DOMINANCE = 0.6


def hgsc_nest_roi(root: Path, card: DatasetCard) -> None:
    """ROI classification tiles: 100 px tiles of the HGSC nest labelled by their dominant nucleus type.

    Same image and type raster as :func:`hgsc_nest_tiles`, cut on a 15x15 grid. A tile
    whose nuclei cover under 3% of it, or where no type holds 60% of the nucleus pixels,
    is left out. Written as ``<class name>/<tile>.png`` (the image-folder layout).
    """
    image, types = hgsc_nest()
    names = {index: name for name, index in card.mask.groups.items()}
    n = image.shape[0] // ROI_TILE
    for r in range(n):
        for c in range(n):
            sl = np.s_[r * ROI_TILE:(r + 1) * ROI_TILE, c * ROI_TILE:(c + 1) * ROI_TILE]
            counts = np.bincount(types[sl].ravel(), minlength=4)[1:4]
            if counts.sum() < ROI_MIN_NUCLEI * ROI_TILE ** 2 or counts.max() < ROI_MIN_DOMINANCE * counts.sum():
                continue
            folder = root / names[int(counts.argmax())]
            folder.mkdir(exist_ok=True)
            Image.fromarray(image[sl]).save(folder / f"hgsc_r{r:02d}c{c:02d}.png", optimize=False)


# --- synthetic tissue -------------------------------------------------------------------

#: Mean RGB of each synthetic class: glass, stroma (eosin pink), epithelium (purple), lymphocytes (dark blue).
_PALETTE = np.array([[242, 240, 244], [226, 150, 184], [170, 110, 170], [90, 60, 140]], dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def synthetic_tile(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One procedurally generated H&E-like tile and its mask (0 bg, 1 stroma, 2 epithelium, 3 lymphocytes)."""
    from scipy.ndimage import gaussian_filter

    tissue = _smooth_noise(rng, size, 24) > rng.uniform(-1.0, -0.2)
    glands = _smooth_noise(rng, size, 10) > rng.uniform(0.4, 0.9)
    mask = np.where(tissue, 1, 0)
    mask[tissue & glands] = 2
    yy, xx = np.mgrid[:size, :size]
    for _ in range(rng.integers(1, 4)):  # lymphocyte aggregates: dense discs
        cy, cx, rad = rng.integers(0, size), rng.integers(0, size), rng.integers(10, 28)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2] = 3
    image = _PALETTE[mask].copy()
    image += 12.0 * _smooth_noise(rng, size, 2)[..., None]  # fibrous texture
    nuclei = gaussian_filter((rng.random((size, size)) < 0.02).astype(np.float32), 1.2) * 6
    image -= (nuclei * np.where(mask == 0, 0.0, 60.0))[..., None] * np.array([0.8, 1.0, 0.4])
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def synthetic_tissue(root: Path, card: DatasetCard) -> None:
    rng = np.random.default_rng(card.split.seed)
    for i in range(card.expected.files or 0):
        image, mask = synthetic_tile(rng)
        _write_pair(root, f"syn_{i:04d}", image, mask)


def _slides_sample(root: Path, card: DatasetCard) -> None:
    from harness.slides.sample import slides_sample  # tifffile and scipy only when the slide sample is built

    slides_sample(root, card, *hgsc_nest())


GENERATORS: dict[str, Callable[[Path, DatasetCard], None]] = {
    "histolytics-hgsc-slides": _slides_sample,
    "histolytics-hgsc-nest": hgsc_nest_tiles,
    "histolytics-hgsc-roi": hgsc_nest_roi,
    "synthetic-tissue": synthetic_tissue,
}


def materialise(card: DatasetCard, root: Path) -> Path:
    """Generate a built-in dataset at ``root`` if it is not there yet (atomically)."""
    if root.is_dir() and (root / ".complete").exists():
        return root
    if card.generator not in GENERATORS:
        raise DataError(f"card '{card.name}' names unknown generator {card.generator!r}", f"use one of {sorted(GENERATORS)}")
    if root.exists():  # an older or half-written generation (no .complete): replaced whole
        shutil.rmtree(root)
    with atomic_directory(root) as tmp:
        GENERATORS[card.generator](tmp, card)
        (tmp / ".complete").write_text(card.card_hash())
    return root
