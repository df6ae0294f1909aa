"""The published PFM-DenseBench numbers, shipped as data, and how our names map onto theirs.

``harness/published/densebench.csv`` holds, for every (strategy, dataset, model) cell of
the reference's website data, the mean and bootstrap CI of the three metrics our rows
share with it (mIoU, mDice, pixel accuracy). It is derived unchanged from the website
repository's ``Data/<strategy>.json`` (attribution and checksums in
``harness/published/ATTRIBUTION.md``); ``python -m harness.report.published DIR``
regenerates it from those files.

Names: a model's ``densebench-name`` label and a card's ``densebench_name`` field give
the reference's keys; strategies map ``cnn_adapter`` -> ``cnn`` and
``transformer_adapter`` -> ``transformer`` (the reference publishes no ``full`` rows).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PUBLISHED_DIR = Path(__file__).resolve().parent.parent / "published"
CSV_PATH = PUBLISHED_DIR / "densebench.csv"
SOURCE = "PFM-DenseBench website data (github.com/M4A1TasteGood/PFM-DenseBench, Data/<strategy>.json, commit 4889b1e)"

#: our strategy -> the reference's file name
STRATEGY_NAMES = {"frozen": "frozen", "lora": "lora", "dora": "dora", "cnn_adapter": "cnn", "transformer_adapter": "transformer"}
#: our metric -> the reference's metric key
METRIC_NAMES = {"mIoU": "mIoU", "mDice": "Mean_Dice", "pixel_accuracy": "Pixel_Accuracy"}
_COLUMNS = ["strategy", "dataset", "model"] + [f"{m}{s}" for m in METRIC_NAMES for s in ("", "_ci_low", "_ci_high")]


@dataclass(frozen=True)
class PublishedValue:
    mean: float
    ci_low: float
    ci_high: float


@lru_cache(maxsize=1)
def _table() -> dict[tuple[str, str, str], dict[str, str]]:
    with CSV_PATH.open(newline="") as f:
        return {(r["strategy"], r["dataset"], r["model"]): r for r in csv.DictReader(f)}


def published(strategy: str, dataset_key: str | None, model_key: str | None, metric: str = "mDice") -> PublishedValue | None:
    """The published value of one cell, in the reference's names; None if there is none."""
    ref_strategy = STRATEGY_NAMES.get(strategy)
    if ref_strategy is None or dataset_key is None or model_key is None or metric not in METRIC_NAMES:
        return None
    row = _table().get((ref_strategy, dataset_key, model_key))
    if row is None:
        return None
    return PublishedValue(float(row[metric]), float(row[f"{metric}_ci_low"]), float(row[f"{metric}_ci_high"]))


def cell_count() -> int:
    return len(_table())


def published_grid(strategy: str = "frozen", metric: str = "mDice") -> tuple[list[str], list[str], dict[tuple[str, str], PublishedValue]]:
    """The published cells of one strategy in the reference's names: (models, datasets, {(model, dataset): value})."""
    ref = STRATEGY_NAMES[strategy]
    cells = {(m, d): PublishedValue(float(r[metric]), float(r[f"{metric}_ci_low"]), float(r[f"{metric}_ci_high"]))
             for (s, d, m), r in _table().items() if s == ref}
    return sorted({m for m, _ in cells}), sorted({d for _, d in cells}), cells


def published_ranks(metric: str = "mDice") -> dict[str, dict[str, float]]:
    """The published leaderboard's average ranks: model -> {strategy: mean over datasets of its rank in that (strategy, dataset)}.

    Ranked as our own entries are (1 = best, ties share the average rank).
    """
    from harness.report.ranks import average_ranks

    out: dict[str, dict[str, float]] = {}
    for strategy in STRATEGY_NAMES:
        models, datasets, cells = published_grid(strategy, metric)
        per_model: dict[str, list[float]] = {m: [] for m in models}
        for d in datasets:
            here = [m for m in models if (m, d) in cells]
            for m, rank in zip(here, average_ranks([cells[(m, d)].mean for m in here])):
                per_model[m].append(rank)
        for m, ranks in per_model.items():
            if ranks:
                out.setdefault(m, {})[strategy] = sum(ranks) / len(ranks)
    return dict(sorted(out.items(), key=lambda kv: sum(kv[1].values()) / len(kv[1])))


def convert(source_dir: Path, out: Path = CSV_PATH) -> int:
    """Write the CSV from the website's ``<strategy>.json`` files; returns the number of cells."""
    rows = []
    for ref in STRATEGY_NAMES.values():
        data = json.loads((source_dir / f"{ref}.json").read_text())
        for dataset in sorted(data):
            for model in sorted(data[dataset]):
                cell = data[dataset][model]
                values = {}
                for metric, key in METRIC_NAMES.items():
                    m = cell[key]
                    values.update({metric: m["mean"], f"{metric}_ci_low": m["ci_lower"], f"{metric}_ci_high": m["ci_upper"]})
                rows.append({"strategy": ref, "dataset": dataset, "model": model, **values})
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _table.cache_clear()
    return len(rows)


if __name__ == "__main__":
    print(f"{convert(Path(sys.argv[1]))} cells written to {CSV_PATH}")
