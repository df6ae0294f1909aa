"""Slide costs (``make perf-slides``): tiling and slide-feature throughput, and the harness's memory against slide size.

Each measurement runs in a fresh child process, so its peak RSS is its own:

- **tiling**: every slide of the card tiled from scratch (thumbnail, Otsu, grid): tiles/s, peak RSS;
- **bags**: one slide's tiles through a served model (the ``local`` runtime: the model's memory is
  the server's, not the harness's) into the feature cache, for the card's first slide and for
  mosaics of it 2 x 2 and 4 x 4 times larger. Streaming keeps the harness's peak RSS flat in
  the number of tiles; the JSON shows it next to the tile counts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a spawned process, with that process's peak RSS (MB) added."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measured, (fn, *args))


def _measured(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    result = fn(*args)
    from harness.results.provenance import peak_rss_mb

    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def _tile_all(card_name: str, out: str) -> dict[str, Any]:
    from harness.data.cards import get_card
    from harness.data.loader import dataset_root
    from harness.slides.table import read_table
    from harness.slides.tiling import tile_slides

    card = get_card(card_name)
    assert card.slides is not None
    records = read_table(card, dataset_root(card))
    s = card.slides
    report = tile_slides({r.slide_id: r.path for r in records}, Path(out), s.tile_px, s.mpp, s.min_tissue)
    return {"slides": report.tiled, "tiles": report.tiles, "seconds": round(report.seconds, 2), "tiles_per_s": round(report.tiles_per_s, 1)}


def _bag(model: str, slide: str, size: int, features: str) -> dict[str, Any]:
    from harness.client.feature_cache import FeatureCache, FeatureKey
    from harness.models.spec import get_spec
    from harness.models.weights import ResolvedWeights
    from harness.runtime import make_runtime
    from harness.slides.bags import slide_bag, slide_fingerprint
    from harness.slides.reader import open_slide
    from harness.slides.tiling import tile_slide
    from harness.util.devices import CPU_EXTRACT_BATCH

    spec = get_spec(model)
    with open_slide(Path(slide)) as s:
        grid = tile_slide(s, 512, 0.5, 0.5)
    key = FeatureKey(spec.name, spec.spec_hash(), "perf", "random:0", "perf", "-", Path(slide).stem, slide_fingerprint(Path(slide), grid), size,
                     (spec.depth - 1,))
    with make_runtime("local", spec, ResolvedWeights.random()) as runtime:
        runtime.infer(__import__("numpy").zeros((1, size, size, 3), "uint8"), (spec.depth - 1,))  # warm-up, not timed
        started = time.perf_counter()
        bag = slide_bag(runtime, FeatureCache(Path(features)), key, Path(slide), grid, size, spec.depth - 1, CPU_EXTRACT_BATCH)
        seconds = time.perf_counter() - started
    return {"tiles": len(grid), "bag_shape": list(bag.shape), "seconds": round(seconds, 2), "tiles_per_s": round(len(grid) / seconds, 1)}


def mosaic(src: Path, dst: Path, times: int) -> None:
    """A slide ``times`` x ``times`` larger: the source's level 0 repeated on a grid (same MPP)."""
    import numpy as np

    from harness.slides.reader import open_slide
    from harness.slides.sample import write_pyramid

    with open_slide(src) as s:
        w, h = s.dimensions
        level0 = s.read(0, 0, 0, (w, h))
        mpp = s.mpp
    write_pyramid(dst, np.tile(level0, (times, times, 1)), mpp=mpp, levels=3)


def slides_perf(card: str = "slides-sample", model: str = "phikon", size: int = 224, mosaics: tuple[int, ...] = (1, 2, 4),
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both measurements; returns the JSON document (``meta``, ``tiling``, ``bags``)."""
    from harness.data.cards import get_card
    from harness.data.loader import dataset_root
    from harness.slides.table import read_table

    c = get_card(card)
    first = read_table(c, dataset_root(c))[0].path
    doc: dict[str, Any] = {"meta": {"host": platform.node(), "cpu_count": os.cpu_count(), "card": card, "model": model, "size": size}}
    with tempfile.TemporaryDirectory(prefix="pfmbench-perf-slides-") as tmp:
        log(f"tiling every slide of {card}")
        doc["tiling"] = _in_child(_tile_all, card, str(Path(tmp) / "tiles"))
        doc["bags"] = []
        for times in mosaics:
            slide = first if times == 1 else Path(tmp) / f"mosaic{times}.tiff"
            if times != 1:
                mosaic(first, slide, times)
            log(f"slide features of {slide.name} ({times}x{times} the first slide) through a local {model} server")
            doc["bags"].append({"mosaic": times, **_in_child(_bag, model, str(slide), size, str(Path(tmp) / f"features{times}"))})
    return doc


def write(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
