"""``pfmbench data prepare``: validate a download against its card, then index it.

Every sample is read and checked first (readable files, image/mask sizes, label values
inside the class set, counts, published checksums); only when all pass are the index
(``index.parquet``: id, split, paths, size, pixels per class), a preview grid
(``preview.png``) and the pointer to the download (``source.json``) written, each
atomically. A failure leaves nothing behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.cards import DatasetCard
from harness.data.loader import SOURCE_FILE, SPLITS, discover, prepared_dir, read_pair, split
from harness.data.samples import materialise
from harness.errors import DataError
from harness.results.provenance import peak_rss_mb
from harness.util.atomic import atomic_write, atomic_write_json
from harness.util.hashing import sha256_file

INDEX_FILE = "index.parquet"
PREVIEW_FILE = "preview.png"
PREVIEW_TILE = 128


@dataclass(frozen=True)
class PrepareReport:
    card: str
    root: Path
    out_dir: Path
    samples: int
    split_sizes: dict[str, int]
    class_pixels: dict[str, int]
    class_images: dict[str, int]  # images holding each class (ROI cards: images per class)
    seconds: float
    images_per_s: float
    peak_rss_mb: float


def _check_sha256(card: DatasetCard, root: Path) -> None:
    for rel, digest in card.expected.sha256.items():
        path = root / rel
        if not path.is_file():
            raise DataError(f"{card.name}: {path}: missing (the card lists its checksum)", "the download is incomplete")
        if sha256_file(path) != digest:
            raise DataError(f"{card.name}: {path}: sha256 differs from the published {digest[:12]}...", "download the file again")


def _overlay(card: DatasetCard, image: np.ndarray, mask: np.ndarray) -> Image.Image:
    colours = np.array([[int(c.color[i:i + 2], 16) for i in (1, 3, 5)] for c in card.classes], np.float32)
    img = image.astype(np.float32)
    fg = (mask > 0) & (mask < card.num_classes)
    img[fg] = 0.55 * img[fg] + 0.45 * colours[mask[fg]]
    return Image.fromarray(img.astype(np.uint8)).resize((PREVIEW_TILE, PREVIEW_TILE), Image.Resampling.BILINEAR)


def _preview(card: DatasetCard, tiles: list[Image.Image], cols: int = 4) -> Image.Image:
    rows = max(1, -(-len(tiles) // cols))
    grid = Image.new("RGB", (cols * PREVIEW_TILE, rows * PREVIEW_TILE), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * PREVIEW_TILE, (i // cols) * PREVIEW_TILE))
    return grid


def prepare(card: DatasetCard, source: Path | None = None, data_dir: Path | None = None,
            on_sample: Callable[[int, int], None] | None = None) -> PrepareReport:
    """Validate every sample of the download at ``source`` (or the built-in generator), then index it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    out_dir = prepared_dir(card, data_dir)
    if source is None:
        if not card.generator:
            raise DataError(f"'{card.name}' is not built in: prepare needs the download", f"pfmbench data prepare {card.name} --from <dir>")
        root = materialise(card, out_dir)
    else:
        root = source.expanduser().resolve()
    _check_sha256(card, root)
    if card.slides is not None:
        from harness.slides.prepare import prepare_slides

        done = prepare_slides(card, root, out_dir, source is not None, on_sample)
        return PrepareReport(card.name, root, out_dir, done["samples"], done["split_sizes"], {}, done["class_images"],  # type: ignore[arg-type]
                             done["seconds"], done["images_per_s"], done["peak_rss_mb"])  # type: ignore[arg-type]
    samples = discover(card, root)
    parts = split(card, samples)
    split_of = {s.ident: name for name, part in parts.items() for s in part}
    cols: dict[str, list] = {k: [] for k in ("id", "split", "image", "mask", "row", "height", "width", "pixels", "ignore_pixels")}
    totals = np.zeros(card.num_classes, np.int64)
    holding = np.zeros(card.num_classes, np.int64)
    tiles: list[Image.Image] = []
    preview_ids = {part[i].ident for part in parts.values() for i in range(min(4, len(part)))}
    for n, s in enumerate(samples, 1):
        image, mask = read_pair(card, s)
        counts = np.bincount(mask.ravel(), minlength=256)
        per_class = counts[: card.num_classes]
        totals += per_class
        holding += per_class > 0
        cols["id"].append(s.ident)
        cols["split"].append(split_of[s.ident])
        cols["image"].append(s.image.relative_to(root).as_posix())
        cols["mask"].append(s.mask.relative_to(root).as_posix())
        cols["row"].append(s.row)
        cols["height"].append(int(mask.shape[0]))
        cols["width"].append(int(mask.shape[1]))
        cols["pixels"].append(per_class.tolist())
        cols["ignore_pixels"].append(int(counts[card.ignore_index]))
        if s.ident in preview_ids:
            tiles.append(_overlay(card, image, mask))
        if on_sample:
            on_sample(n, len(samples))
    table = pa.table(cols).replace_schema_metadata({
        "card": card.name, "card_hash": card.card_hash(), "root": str(root), "class_names": json.dumps(card.class_names),
    })
    # Everything validated: write (each file atomically; the folder only now).
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / INDEX_FILE, lambda f: pq.write_table(table, f))
    atomic_write(out_dir / PREVIEW_FILE, lambda f: _preview(card, tiles).save(f, format="PNG"))
    if source is not None:
        atomic_write_json(out_dir / SOURCE_FILE, {"root": str(root), "card_hash": card.card_hash()})
    seconds = time.perf_counter() - started
    return PrepareReport(
        card.name, root, out_dir, len(samples), {k: len(parts[k]) for k in SPLITS},
        dict(zip(card.class_names, totals.tolist())), dict(zip(card.class_names, holding.tolist())), seconds, len(samples) / seconds,
        peak_rss_mb(),
    )
