"""``pfmbench cache``: the feature cache of frozen runs (docs/performance.md)."""

from __future__ import annotations

from rich.table import Table

from harness.cli._app import sub_app
from harness.cli._common import out

cache_app = sub_app("cache", "The feature cache: token grids of frozen runs, reused by every later run with the same key (docs/performance.md).")


@cache_app.command("list")
def cache_list() -> None:
    """Every cached split: model, dataset, split, size, blocks, images and bytes on disk."""
    from harness.client.feature_cache import FeatureCache

    cache = FeatureCache()
    t = Table(title=str(cache.root))
    for col in ("entry", "model", "dataset", "split", "size", "blocks", "images", "environment", "MB"):
        t.add_column(col)
    total = 0
    for path, meta, nbytes in cache.entries():
        k = meta["key"]
        total += nbytes
        t.add_row(path.name[:12], k["model"], k["dataset"], k["split"], str(k["size"]), str(k["blocks"]), str(meta["shape"][0]),
                  k["environment"][:40], f"{nbytes / 1e6:.1f}")
    out.print(t)
    out.print(f"{total / 1e9:.2f} GB in {len(t.rows)} entries")


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete every cached split (later frozen runs extract again)."""
    from harness.client.feature_cache import FeatureCache

    cache = FeatureCache()
    count, freed = cache.clear()
    out.print(f"removed {count} entries ({freed / 1e9:.2f} GB) from {cache.root}")
