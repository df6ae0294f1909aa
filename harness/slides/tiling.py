"""Cut a slide's tissue into tiles at a target resolution; the coordinates are what later steps read.

GPFM tiles at 512 px of ~0.5 µm per pixel (level 0 of a 20x scan). A tile's edge at level
0 is therefore ``tile_px * mpp / slide_mpp`` pixels: 512 on a 0.5 µm scan, 1024 on a 0.25 µm
(40x) one. Tiles lie on a grid from the slide's origin, and a tile is kept when tissue
covers at least ``min_tissue`` of it on the thumbnail. The tile's pixels are later read
from the coarsest level that is still at least as fine as the target, then resized.

:func:`tile_card` tiles every slide of a card into ``<data>/<card>/tiles/<slide>.npz``,
each written atomically: a run killed mid-card resumes at the first slide with no file,
and a bad slide is one error line while the others go on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import DataError
from harness.results.provenance import peak_rss_mb
from harness.slides.reader import Slide, open_slide, slide_error
from harness.slides.tissue import tissue_mask
from harness.util.atomic import atomic_write

if TYPE_CHECKING:
    from harness.data.cards import DatasetCard
    from harness.slides.table import SlideRecord

#: Thumbnail pixels per tile edge: fine enough to measure a tile's tissue share.
THUMB_PER_TILE = 16
#: Tissue pieces smaller than this share of one tile's area are debris.
MIN_PIECE_TILES = 0.25


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one slide: level-0 top-left corners, and how to read them."""

    coords: np.ndarray  # int64 [N, 2]: x, y at level 0
    tile_level0: int  # tile edge at level 0, pixels
    tile_px: int  # tile edge at the target resolution
    mpp: float  # target microns per pixel
    slide_mpp: float
    params: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.coords)


def tile_slide(slide: Slide, tile_px: int = 512, mpp: float = 0.5, min_tissue: float = 0.5) -> TileGrid:
    """The tissue tiles of ``slide`` (:class:`DataError` naming the file when it has none)."""
    edge = max(1, round(tile_px * mpp / slide.mpp))
    downsample = edge / THUMB_PER_TILE
    thumb = slide.thumbnail(downsample)
    mask = tissue_mask(thumb, min_area_px=int(MIN_PIECE_TILES * THUMB_PER_TILE ** 2))
    w, h = slide.dimensions
    cols, rows = w // edge, h // edge
    share = mask[: rows * THUMB_PER_TILE, : cols * THUMB_PER_TILE]
    if share.shape != (rows * THUMB_PER_TILE, cols * THUMB_PER_TILE):  # the thumbnail is rounded up: never short
        raise slide_error(slide.path, f"thumbnail {mask.shape} smaller than the tile grid {rows}x{cols}")
    share = share.reshape(rows, THUMB_PER_TILE, cols, THUMB_PER_TILE).mean(axis=(1, 3))
    ys, xs = np.nonzero(share >= min_tissue)
    if not len(ys):
        why = "smaller than one tile" if not (rows and cols) else f"no {tile_px} px tile at {mpp} um/px is {min_tissue:.0%} tissue"
        raise slide_error(slide.path, f"no tissue found ({why})", "check the slide, or remove its row from the table")
    coords = np.stack([xs * edge, ys * edge], 1).astype(np.int64)
    return TileGrid(coords, edge, tile_px, mpp, slide.mpp, {"tile_px": tile_px, "mpp": mpp, "min_tissue": min_tissue})


def tiles_path(tiles_dir: Path, slide_id: str) -> Path:
    return tiles_dir / f"{slide_id}.npz"


def save_grid(path: Path, grid: TileGrid, slide: Slide) -> None:
    """Write the grid atomically, with the parameters and the slide's identity (size, mtime) it was cut for."""
    stat = slide.path.stat()
    meta = {**grid.params, "tile_level0": grid.tile_level0, "slide_mpp": grid.slide_mpp, "slide": str(slide.path),
            "slide_bytes": stat.st_size, "slide_mtime_ns": stat.st_mtime_ns, "backend": slide.backend}
    atomic_write(path, lambda f: np.savez(f, coords=grid.coords, meta=np.array(json.dumps(meta))))


def load_grid(path: Path, slide_path: Path | None = None, params: dict[str, object] | None = None) -> TileGrid | None:
    """The saved grid, or None when absent, unreadable, cut with other parameters, or for a changed slide file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            coords, meta = z["coords"], json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return None
    if params is not None and any(meta.get(k) != v for k, v in params.items()):
        return None
    if slide_path is not None:
        try:
            stat = slide_path.stat()
        except OSError:
            return None
        if (stat.st_size, stat.st_mtime_ns) != (meta["slide_bytes"], meta["slide_mtime_ns"]):
            return None
    grid_params = {k: meta[k] for k in ("tile_px", "mpp", "min_tissue")}
    return TileGrid(coords, int(meta["tile_level0"]), int(meta["tile_px"]), float(meta["mpp"]), float(meta["slide_mpp"]), grid_params)


@dataclass
class TilingReport:
    tiled: int = 0
    skipped: int = 0  # already tiled with the same parameters
    failed: list[str] = field(default_factory=list)  # one error line per bad slide
    tiles: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0


def tile_slides(slides: dict[str, Path], tiles_dir: Path, tile_px: int, mpp: float, min_tissue: float,
                on_slide: Callable[[str, str], None] | None = None) -> TilingReport:
    """Tile every slide not tiled yet (same parameters, same file); ``on_slide(slide_id, outcome)`` after each.

    A bad slide's :class:`DataError` is recorded as one line and the next slide goes on.
    """

    started = time.perf_counter()
    report = TilingReport()
    params: dict[str, object] = {"tile_px": tile_px, "mpp": mpp, "min_tissue": min_tissue}
    tiles_dir.mkdir(parents=True, exist_ok=True)
    for slide_id, path in slides.items():
        out = tiles_path(tiles_dir, slide_id)
        if (done := load_grid(out, path, params)) is not None:
            report.skipped += 1
            outcome = f"{len(done)} tiles (already tiled)"
        else:
            try:
                with open_slide(path) as slide:
                    grid = tile_slide(slide, tile_px, mpp, min_tissue)
                    save_grid(out, grid, slide)
            except DataError as exc:
                report.failed.append(exc.one_line())
                outcome = "failed"
            else:
                report.tiled += 1
                report.tiles += len(grid)
                outcome = f"{len(grid)} tiles"
        if on_slide:
            on_slide(slide_id, outcome)
    report.seconds = time.perf_counter() - started
    report.peak_rss_mb = peak_rss_mb()
    return report


#: Under the card's prepared folder: ``<data>/<card>/tiles/<slide>.npz``.
TILES_DIR = "tiles"


def card_tiles_dir(card: DatasetCard, data_dir: Path | None = None) -> Path:
    from harness.data.loader import prepared_dir

    return prepared_dir(card, data_dir) / TILES_DIR


def tile_card(card: DatasetCard, data_dir: Path | None = None, records: list[SlideRecord] | None = None,
              on_slide: Callable[[str, str], None] | None = None) -> tuple[TilingReport, dict[str, TileGrid]]:
    """Tile every slide of ``card`` not tiled yet (its table validated first); returns the report and the grids that exist."""
    from harness.data.loader import dataset_root
    from harness.slides.table import read_table

    assert card.slides is not None, "a slide card"
    if records is None:
        records = read_table(card, dataset_root(card, data_dir))
    out = card_tiles_dir(card, data_dir)
    s = card.slides
    report = tile_slides({r.slide_id: r.path for r in records}, out, s.tile_px, s.mpp, s.min_tissue, on_slide)
    grids = {r.slide_id: g for r in records if (g := load_grid(tiles_path(out, r.slide_id))) is not None}
    return report, grids
