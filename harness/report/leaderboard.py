"""Leaderboard from result rows: one entry per (dataset, strategy, preset, model, weights), ranks, published deltas.

Rules (docs/strategies.md, "The report"):

* The newest row of each configuration counts (a re-run, or the same run in another runtime, replaces it).
* Rows that differ only in seed are one entry: the metric is their mean, the CI the mean
  of their bootstrap CI bounds, ``n`` says how many seeds.
* Ranks are within (dataset, strategy, preset) among entries of the same weights kind,
  1 = best, ties share the average rank. A model's average rank is the mean over the
  datasets it has an entry on (``datasets`` says how many).
* Entries with untrained (``random``) weights are marked and are never compared to
  published numbers; entries with real weights get the published value of the same cell
  and the difference, where the reference published one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from harness.config import REFERENCE_UNADAPTED
from harness.report.published import PublishedValue, published
from harness.report.ranks import average_ranks


@dataclass
class Entry:
    dataset: str
    strategy: str
    preset: str
    model: str
    weights: str
    n: int
    value: float
    ci_low: float
    ci_high: float
    rank: float | None = None
    published: PublishedValue | None = None
    note: str = ""
    #: How the run was made (epochs, input size, preset, decoder, inference, engine): a 2-epoch 112 px row must not pass for a standard one.
    context: str = ""
    #: (class name, mean per-class Dice over the seeds) in the card's order; None where a class was absent from every test split.
    per_class: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def random(self) -> bool:
        return self.weights == "random"

    @property
    def delta(self) -> float | None:
        return None if self.published is None else self.value - self.published.mean

    @property
    def within_published_ci(self) -> bool | None:
        return None if self.published is None else self.published.ci_low <= self.value <= self.published.ci_high

    @property
    def delta_ci_units(self) -> float | None:
        """The difference to the published value in units of the published CI on that side (|x| <= 1: inside it).

        Bootstrap CIs are not symmetric: a value above the mean is measured against
        ``ci_high - mean``, one below against ``mean - ci_low``.
        """
        if self.published is None or self.delta is None:
            return None
        p = self.published
        half = p.ci_high - p.mean if self.delta >= 0 else p.mean - p.ci_low
        return None if half <= 0 else self.delta / half


@dataclass
class ModelRank:
    model: str
    strategy: str  # or "all"
    preset: str
    random: bool
    average_rank: float
    datasets: int


@dataclass
class Leaderboard:
    metric: str
    entries: list[Entry]
    ranks: list[ModelRank] = field(default_factory=list)

    def groups(self) -> dict[tuple[str, str, str], list[Entry]]:
        """(dataset, strategy, preset) -> entries, best first (real weights before random)."""
        out: dict[tuple[str, str, str], list[Entry]] = defaultdict(list)
        for e in self.entries:
            out[(e.dataset, e.strategy, e.preset)].append(e)
        return {k: sorted(v, key=lambda e: (e.random, e.rank or 0, e.model)) for k, v in sorted(out.items())}

    @property
    def compared(self) -> list[Entry]:
        return [e for e in self.entries if e.published is not None]


def build_leaderboard(rows: list[dict], metric: str = "mDice", keys: dict[str, dict[str, str | None]] | None = None) -> Leaderboard:
    """Entries, ranks and published comparisons of ``rows`` (as :func:`harness.results.store.read_rows` returns them).

    ``keys`` maps our model and dataset names to the reference's (``{"models": {...}, "datasets": {...}}``);
    by default they are read from the model specs and dataset cards.
    """
    rows = [r for r in rows if r.get("task", "segmentation") == "segmentation"]  # ROI rows have their own metrics (docs/gpfm.md)
    keys = keys or _reference_keys(rows)
    newest: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r["created_at"]):
        newest[(r["config_hash"], r["weights"], r["model_spec_hash"], r["card_hash"])] = r  # one per configuration, whatever ran it
    seeds: dict[tuple, list[dict]] = defaultdict(list)
    for r in newest.values():
        seeds[(r["dataset"], r["strategy"], r["preset"], r["model"], r["weights"])].append(r)
    entries = []
    for (dataset, strategy, preset, model, weights), group in sorted(seeds.items()):
        def mean(col: str, group: list[dict] = group) -> float:
            return sum(float(g[col]) for g in group) / len(group)

        e = Entry(dataset, strategy, preset, model, weights, len(group), mean(metric), mean(f"{metric}_ci_low"), mean(f"{metric}_ci_high"),
                  context=run_context(group[0]), per_class=per_class_means(group, "per_class_dice"))
        ref_model, ref_dataset = keys["models"].get(model), keys["datasets"].get(dataset)
        if not e.random:
            e.published = published(strategy, ref_dataset, ref_model, metric)
            notes = []
            if e.published is not None and strategy in ("lora", "dora") and model in REFERENCE_UNADAPTED:
                notes.append("reference did not wrap this model's attention: its published value is a frozen run")
            if e.published is not None:
                # the published cells used the reference's own split lists (its configs/data/<dataset>.json), not imported here
                notes.append("splits differ: the published value used the reference's split lists; "
                             f"this entry's is the {_split_source(group[0]).removeprefix('split ') or 'card split'}")
            e.note = "; ".join(notes)
        entries.append(e)
    board = Leaderboard(metric, entries)
    by_cell: dict[tuple, list[Entry]] = defaultdict(list)
    for e in entries:
        by_cell[(e.dataset, e.strategy, e.preset, e.random)].append(e)
    for cell in by_cell.values():
        for e, rank in zip(cell, average_ranks([e.value for e in cell])):
            e.rank = rank
    board.ranks = _model_ranks(entries)
    return board


def run_context(row: dict) -> str:
    """One line saying how a row was made: ``2 ep, 96 px, densebench, transunet, resize, torch, augment none, split seeded 70/20/10 (card seed 42)``."""
    import json

    parts = [f"{row.get('epochs')} ep", f"{row.get('input_size')} px", str(row.get("preset"))]
    parts += [str(row[k]) for k in ("decoder", "inference", "engine") if row.get(k)]
    if row.get("device") and row["device"] != "cpu":
        parts.append(f"{row['device']} {row.get('precision') or ''}".strip())
    try:
        augment = json.loads(row.get("config_json") or "{}").get("augment")
    except ValueError:
        augment = None
    if augment:
        parts.append(f"augment {augment}")
    if row.get("adapted_modules") == 0:
        parts.append("no adapter: frozen backbone, as the reference's LoRA/DoRA for this model")
    if split := _split_source(row):
        parts.append(split)
    return ", ".join(parts)


def _split_source(row: dict) -> str:
    """Where the row's split came from: the card's official split, or a seeded cut (ratios and seed); "" for a card that is gone."""
    from harness.data.cards import get_card
    from harness.errors import PfmbenchError

    try:
        split = get_card(row["dataset"]).split
    except PfmbenchError:
        return ""
    if split.rule == "official":
        return "split official"
    return f"split seeded {'/'.join(f'{100 * r:g}' for r in split.ratios)} (card seed {split.seed})"


def per_class_means(group: list[dict], column: str) -> list[tuple[str, float | None]]:
    """(class, mean over the group's rows) for a per-class column; None where no row has a value for that class."""
    names = list(group[0].get("class_names") or [])
    out = []
    for i, name in enumerate(names):
        values = [float(v[i]) for r in group if (v := r.get(column)) is not None and i < len(v) and v[i] is not None]
        out.append((name, sum(values) / len(values) if values else None))
    return out


def _model_ranks(entries: list[Entry]) -> list[ModelRank]:
    per: dict[tuple, list[float]] = defaultdict(list)
    for e in entries:
        per[(e.model, e.strategy, e.preset, e.random)].append(e.rank or 0.0)
        per[(e.model, "all", e.preset, e.random)].append(e.rank or 0.0)
    out = [ModelRank(m, s, p, r, sum(v) / len(v), len(v)) for (m, s, p, r), v in per.items()]
    return sorted(out, key=lambda x: (x.random, x.preset, x.strategy != "all", x.strategy, x.average_rank, x.model))


def _reference_keys(rows: list[dict]) -> dict[str, dict[str, str | None]]:
    from harness.data.cards import get_card
    from harness.errors import PfmbenchError
    from harness.models.spec import get_spec

    models: dict[str, str | None] = {}
    datasets: dict[str, str | None] = {}
    for r in rows:
        for name, table, lookup in ((r["model"], models, get_spec), (r["dataset"], datasets, get_card)):
            if name not in table:
                try:
                    table[name] = lookup(name).densebench_name
                except PfmbenchError:  # a model or card that is gone since the row was written
                    table[name] = None
    return {"models": models, "datasets": datasets}
