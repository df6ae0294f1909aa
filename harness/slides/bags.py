"""Slide features: every tile of a slide through the served model, into the feature cache as one bag.

A bag is the slide's tile embeddings, fp16 ``[N, D]`` (the final-norm CLS of each tile, the
embedding GPFM's slide tasks aggregate), in tile order. Tiles are read from the slide a
batch at a time on worker threads while ``runtime.in_flight`` requests are at the server,
and each batch is written to the cache entry as it returns: memory stays flat however
many tiles a slide has. Each slide is its own entry (committed whole or not at all), so a
killed extraction resumes at the first slide without one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from harness.client.feature_cache import FeatureCache, FeatureKey
from harness.runtime import Runtime
from harness.slides.reader import Slide, open_slide
from harness.slides.tiling import TileGrid
from harness.util.pipeline import ahead

_FINGERPRINT_BYTES = 1 << 20


def slide_fingerprint(path: Path, grid: TileGrid) -> str:
    """What the bag's pixels depend on: the file's size and its first and last MiB, and the tile grid.

    Hashing a multi-gigabyte slide whole on every run would cost more than the extraction it
    saves; a changed scan changes its size or header, and a re-cut grid its coordinates.
    """
    h = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        f.seek(max(0, size - _FINGERPRINT_BYTES))
        h.update(f.read(_FINGERPRINT_BYTES))
    h.update(repr((size, grid.tile_level0, grid.tile_px, grid.mpp)).encode())
    h.update(np.ascontiguousarray(grid.coords, np.int64).tobytes())
    return h.hexdigest()


def read_tiles(slide: Slide, grid: TileGrid, coords: np.ndarray, size: int) -> np.ndarray:
    """The tiles at ``coords`` as model input, ``uint8 [b, size, size, 3]``: read at the finest level needed, then resized."""
    level = slide.best_level(grid.tile_level0 / grid.tile_px)
    edge = max(1, round(grid.tile_level0 / slide.level_downsamples[level]))
    out = np.empty((len(coords), size, size, 3), np.uint8)
    for i, (x, y) in enumerate(coords):
        tile = slide.read(int(x), int(y), level, (edge, edge))
        out[i] = tile if edge == size else np.asarray(Image.fromarray(tile).resize((size, size), Image.Resampling.BILINEAR))
    return out


def iter_bag(runtime: Runtime, slide: Slide, grid: TileGrid, size: int, block: int, batch: int,
             on_batch: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """The slide's tile embeddings, fp16 ``[b, D]`` per batch, in tile order; reading and requests overlap."""
    chunks = (grid.coords[i:i + batch] for i in range(0, len(grid), batch))

    def embed(coords: np.ndarray) -> np.ndarray:
        _, cls = runtime.infer(read_tiles(slide, grid, coords, size), (block,))
        return np.asarray(cls[:, 0], np.float16)

    for feats in ahead(embed, chunks, runtime.in_flight, name="tiles"):
        if on_batch:
            on_batch(len(feats))
        yield feats


def slide_bag(runtime: Runtime, cache: FeatureCache | None, key: FeatureKey | None, path: Path, grid: TileGrid, size: int,
              block: int, batch: int, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """The slide's bag ``[N, D]``: from the cache when there, else extracted (and cached when ``cache`` and ``key`` are given)."""
    if cache is not None and key is not None and (hit := cache.get(key)) is not None:
        if on_batch:
            on_batch(len(hit))
        return hit
    with open_slide(path) as slide:
        batches = iter_bag(runtime, slide, grid, size, block, batch, on_batch)
        if cache is None or key is None:
            return np.concatenate(list(batches))
        return cache.put(key, batches)
