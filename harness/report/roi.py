"""The GPFM section of the report: ROI (linear probe, kNN) and slide (ABMIL, Cox survival) rows, one entry per
(dataset, task, model, weights).

The same rules as the segmentation leaderboard (:mod:`harness.report.leaderboard`): the
newest row of a configuration counts, seeds are averaged (the CI as the mean of their
bounds), entries are ranked within (dataset, task) by macro AUROC (linear probe, ABMIL),
top-1 accuracy (kNN) or the mean C-index over folds (survival) among entries of the same
weights kind.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from harness.report.leaderboard import per_class_means, run_context
from harness.report.ranks import average_ranks
from harness.results.schema import ROI_METRICS, TOPK_METRICS

#: What ranks a task's entries: each task's headline metric.
RANK_METRIC = {"roi-linear": "macro_auroc", "roi-knn": "top1_acc", "wsi-abmil": "macro_auroc", "wsi-survival": "c_index"}
#: Every metric the section shows, in column order (top-k and the C-index carry no CI in this table).
_METRICS = (*ROI_METRICS, *TOPK_METRICS, "c_index")


@dataclass
class RoiEntry:
    dataset: str
    task: str
    model: str
    weights: str
    n: int
    #: metric -> (mean, ci low, ci high); top-k accuracies carry no CI (low = high = mean)
    values: dict[str, tuple[float, float, float]]
    context: str
    per_class: list[tuple[str, float | None]] = field(default_factory=list)
    rank: float | None = None

    @property
    def random(self) -> bool:
        return self.weights == "random"


def build_roi_entries(rows: list[dict]) -> dict[tuple[str, str], list[RoiEntry]]:
    """(dataset, task) -> entries, best first (real weights before random)."""
    rows = [r for r in rows if r.get("task") in RANK_METRIC]
    newest: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r["created_at"]):
        newest[(r["config_hash"], r["weights"], r["model_spec_hash"], r["card_hash"])] = r
    seeds: dict[tuple, list[dict]] = defaultdict(list)
    for r in newest.values():
        seeds[(r["dataset"], r["task"], r["model"], r["weights"])].append(r)
    groups: dict[tuple[str, str], list[RoiEntry]] = defaultdict(list)
    for (dataset, task, model, weights), group in sorted(seeds.items()):
        values = {}
        for m in _METRICS:
            got = [float(g[m]) for g in group if g.get(m) is not None]
            if not got:
                continue
            lows = [float(g[f"{m}_ci_low"]) for g in group if g.get(f"{m}_ci_low") is not None]
            highs = [float(g[f"{m}_ci_high"]) for g in group if g.get(f"{m}_ci_high") is not None]
            mean = sum(got) / len(got)
            values[m] = (mean, sum(lows) / len(lows) if lows else mean, sum(highs) / len(highs) if highs else mean)
        groups[(dataset, task)].append(RoiEntry(dataset, task, model, weights, len(group), values, run_context_roi(group[0]),
                                                per_class_means(group, "per_class_f1")))
    for (_, task), entries in groups.items():
        for random in (False, True):
            cell = [e for e in entries if e.random == random and RANK_METRIC[task] in e.values]
            for e, rank in zip(cell, average_ranks([e.values[RANK_METRIC[task]][0] for e in cell])):
                e.rank = rank
        entries.sort(key=lambda e: (e.random, e.rank or 0, e.model))
    return dict(sorted(groups.items()))


def run_context_roi(row: dict) -> str:
    """An ROI row's context: the segmentation one without decoder and inference, which an ROI row does not have."""
    return run_context({**row, "decoder": None, "inference": None})


def roi_columns(groups: dict[tuple[str, str], list[RoiEntry]]) -> dict[tuple[str, str], list[str]]:
    """The metrics some entry of each (dataset, task) has, in schema order (a linear probe has no top-k, kNN no AUROC)."""
    return {key: [m for m in _METRICS if any(m in e.values for e in entries)] for key, entries in groups.items()}
