"""``pfmbench data prepare`` for a slide card: the table and every slide checked, then one index written.

Checked before anything is written: the table (:func:`~harness.slides.table.read_table`:
columns, duplicates, labels, times, events, missing files), then each slide opened (a
known, untruncated format with microns per pixel). The index (``index.parquet``: slide,
case, path, label, time, event, split, level-0 size, MPP) and the pointer to the download
are written only when all pass, each atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from harness.data.cards import DatasetCard
from harness.results.provenance import peak_rss_mb
from harness.slides.reader import open_slide
from harness.slides.table import case_split, read_table


def prepare_slides(card: DatasetCard, root: Path, out_dir: Path, write_source: bool,
                   on_sample: Callable[[int, int], None] | None = None) -> dict[str, object]:
    """Validate ``root`` against the slide card and write the index; returns what ``PrepareReport`` needs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.data.loader import SOURCE_FILE
    from harness.util.atomic import atomic_write, atomic_write_json

    started = time.perf_counter()
    records = read_table(card, root)
    parts = case_split(records, card.split.ratios, card.split.seed) if card.slides and card.slides.label_column else {"all": records}
    split_of = {r.slide_id: name for name, part in parts.items() for r in part}
    cols: dict[str, list] = {k: [] for k in ("slide_id", "case_id", "path", "label", "time", "event", "split", "width", "height", "mpp")}
    for n, r in enumerate(records, 1):
        with open_slide(r.path) as slide:
            w, h = slide.dimensions
            mpp = slide.mpp
        for k, v in (("slide_id", r.slide_id), ("case_id", r.case_id), ("path", r.path.relative_to(root).as_posix()), ("label", r.label),
                     ("time", r.time), ("event", r.event), ("split", split_of[r.slide_id]), ("width", w), ("height", h), ("mpp", mpp)):
            cols[k].append(v)
        if on_sample:
            on_sample(n, len(records))
    table = pa.table(cols).replace_schema_metadata({"card": card.name, "card_hash": card.card_hash(), "root": str(root),
                                                    "class_names": json.dumps(card.class_names)})
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "index.parquet", lambda f: pq.write_table(table, f))
    if write_source:
        atomic_write_json(out_dir / SOURCE_FILE, {"root": str(root), "card_hash": card.card_hash()})
    per_class = {c.name: sum(r.label == c.index for r in records) for c in card.classes}
    seconds = time.perf_counter() - started
    return {"samples": len(records), "split_sizes": {k: len(v) for k, v in parts.items()}, "class_images": per_class,
            "cases": len({r.case_id for r in records}), "events": sum(int(r.event or 0) for r in records), "seconds": seconds,
            "images_per_s": len(records) / seconds if seconds else 0.0, "peak_rss_mb": peak_rss_mb()}
