"""The slide tasks: card -> tiles -> served tile embeddings as one bag per slide -> ABMIL -> metrics -> row.

``wsi-abmil`` (GPFM's WSI classification): a bag per slide, cases split 7:1:2 (seeded),
ABMIL trained with class-weighted sampling and early stopping on the validation loss;
test macro AUROC (one-vs-rest), macro F1 and balanced accuracy with bootstrap 95% CIs.

``wsi-survival`` (GPFM's survival tasks): a bag per case (its slides' tiles together), 5
folds over cases, ABMIL fitted by the Cox partial likelihood on 4 folds and scored on the
fifth; the row has each fold's C-index with its 95% CI, and their mean and deviation.

Tiling happens on first use (or by ``pfmbench slides tile``); the bags live in the
feature cache, keyed like every other cached feature, so a second run, another seed or
the other task on the same card extracts nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from harness.client.feature_cache import FeatureCache, FeatureKey
from harness.config import WsiConfig
from harness.data.cards import DatasetCard
from harness.data.loader import dataset_root
from harness.errors import DataError
from harness.metrics import finite_or_none
from harness.metrics.classification import evaluate_classification
from harness.mil.train import MilRecipe, predict, train_classifier, train_survival
from harness.results import provenance
from harness.results.schema import ROI_METRICS, ResultRow
from harness.run.plan import Plan, feature_environment
from harness.run.task import RunContext
from harness.runtime import make_runtime
from harness.slides.bags import slide_bag, slide_fingerprint
from harness.slides.table import SlideRecord, case_folds, case_split, read_table
from harness.slides.tiling import TileGrid, tile_card
from harness.util.devices import autocast, extraction_batch, precision
from harness.util.progress import progress_bar


def ensure_tiles(card: DatasetCard, data_dir: Path | None, records: list[SlideRecord]) -> dict[str, TileGrid]:
    """Every slide's tile grid, tiling the slides not tiled yet; a slide that cannot be tiled stops the run (one line)."""
    report, grids = tile_card(card, data_dir, records)
    if report.failed:
        more = f" (and {len(report.failed) - 1} more)" if len(report.failed) > 1 else ""
        raise DataError(f"{report.failed[0]}{more}", f"fix or remove those slides; 'pfmbench slides tile {card.name}' lists each")
    return grids


class WsiTask:
    """GPFM's slide tasks on ABMIL: ``wsi-abmil`` (a class per slide) and ``wsi-survival`` (a risk per case)."""

    def compute(self, plan: Plan, ctx: RunContext) -> ResultRow:
        return _run_wsi(plan, ctx)

    def after_write(self, plan: Plan, ctx: RunContext) -> None:
        pass  # the bags stay in the feature cache for the next run; nothing else is left behind


def _bags(plan: Plan, ctx: RunContext, records: list[SlideRecord], grids: dict[str, TileGrid]) -> tuple[dict[str, np.ndarray], str, str | None]:
    """Each slide's bag through the plan's runtime (cached per slide), the transfer used and the image digest."""
    cfg, spec, card = plan.cfg, plan.spec, plan.card
    cache = FeatureCache() if ctx.feature_cache else None
    environment = feature_environment(plan)
    block = spec.depth - 1

    def key(r: SlideRecord) -> FeatureKey | None:
        if environment is None:
            return None
        return FeatureKey(spec.name, spec.spec_hash(), environment, plan.weights.identity, card.name, card.card_hash(), f"slide:{r.slide_id}",
                          slide_fingerprint(r.path, grids[r.slide_id]), plan.size, (block,))

    bags = {}
    total = sum(len(g) for g in grids.values())
    with make_runtime(cfg.runtime, spec, plan.weights, endpoint=ctx.endpoint, **ctx.runtime_options(plan.dtype)) as runtime, \
            progress_bar(ctx.show_progress) as bar:
        task = bar.add_task(f"tile embeddings {spec.name} ({runtime.name})", total=total, info=f"{len(records)} slides, {plan.size}px")
        batch = extraction_batch(ctx.device, spec, plan.size, 1, 64)
        for r in records:
            bags[r.slide_id] = slide_bag(runtime, cache, key(r), r.path, grids[r.slide_id], plan.size, block, batch,
                                         lambda n: bar.advance(task, n))
        return bags, runtime.transfer, runtime.image_digest or plan.image_digest


def _recipe(cfg: WsiConfig) -> MilRecipe:
    return MilRecipe(cfg.epochs, cfg.patience, cfg.lr, cfg.weight_decay, cfg.hidden, cfg.attention, cfg.dropout, cfg.batch_size, cfg.seed)


def _classify(plan: Plan, ctx: RunContext, records: list[SlideRecord], bags: dict[str, np.ndarray]) -> dict[str, object]:
    cfg, card = plan.cfg, plan.card
    assert isinstance(cfg, WsiConfig) and card.slides is not None
    parts = case_split(records, card.split.ratios, card.split.seed)
    data = {name: ([bags[r.slide_id] for r in part], np.array([r.label for r in part], np.int64)) for name, part in parts.items()}
    with progress_bar(ctx.show_progress) as bar:
        task = bar.add_task("ABMIL", total=cfg.epochs, info="")
        result = train_classifier(*data["train"], *data["val"], data["test"][0], card.num_classes, _recipe(cfg), ctx.device,
                                  lambda e, loss, val: bar.update(task, advance=1, info=f"loss {loss:.4f} val loss {val:.4f}"))
    report = evaluate_classification(data["test"][1], result.test_prob, n_boot=cfg.n_bootstrap, seed=cfg.seed)
    cols: dict[str, object] = {}
    for m in ROI_METRICS:
        cols[m] = finite_or_none(report.metrics[m])
        cols[f"{m}_ci_low"], cols[f"{m}_ci_high"] = (finite_or_none(v) for v in report.ci[m])
    return {**cols, "per_class_f1": report.per_class_f1, "split_sizes": [len(parts[s]) for s in ("train", "val", "test")],
            "best_epoch": result.best_epoch, "best_val": result.best_val, "trainable_params": result.trainable_params,
            "epochs": result.epochs_run}


def _survival(plan: Plan, ctx: RunContext, records: list[SlideRecord], bags: dict[str, np.ndarray]) -> dict[str, object]:
    from harness.metrics.survival import concordance

    cfg, card = plan.cfg, plan.card
    assert isinstance(cfg, WsiConfig) and card.slides is not None
    cases: dict[str, list[SlideRecord]] = {}
    for r in records:
        cases.setdefault(r.case_id, []).append(r)
    # a case's bag: its slides' tiles together (survival belongs to the patient)
    case_bag = {c: np.concatenate([bags[r.slide_id] for r in rs]) if len(rs) > 1 else bags[rs[0].slide_id] for c, rs in cases.items()}
    time_of = {c: float(rs[0].time) for c, rs in cases.items()}  # type: ignore[arg-type]
    event_of = {c: int(rs[0].event) for c, rs in cases.items()}  # type: ignore[arg-type]
    folds = case_folds(records, card.slides.folds, card.split.seed)
    per_fold, lows, highs, trainable = [], [], [], 0
    with progress_bar(ctx.show_progress) as bar:
        task = bar.add_task(f"ABMIL Cox, {len(folds)} folds", total=cfg.epochs * len(folds), info="")
        for k, test_ids in enumerate(folds):
            train_ids = [c for j, f in enumerate(folds) if j != k for c in f]
            def step(epoch: int, loss: float, fold: int = k + 1) -> None:
                bar.update(task, advance=1, info=f"fold {fold} loss {loss:.4f}")

            model = train_survival([case_bag[c] for c in train_ids], np.array([time_of[c] for c in train_ids]),
                                   np.array([event_of[c] for c in train_ids]), _recipe(cfg), ctx.device, step)
            risk = predict(model, [case_bag[c] for c in test_ids], ctx.device)[:, 0]
            c_index = concordance(risk, np.array([time_of[c] for c in test_ids]), np.array([event_of[c] for c in test_ids]),
                                  cfg.n_bootstrap, cfg.seed)
            per_fold.append(c_index.value)
            lows.append(c_index.ci_low)
            highs.append(c_index.ci_high)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    scored = [v for v in per_fold if v == v]
    if not scored:
        raise DataError(f"{card.name}: no fold has an observed event to score", "survival needs events (event = 1) in the table")
    return {"c_index": float(np.mean(scored)), "c_index_std": float(np.std(scored)), "fold_c_index": [finite_or_none(v) for v in per_fold],
            "fold_c_index_ci_low": [finite_or_none(v) for v in lows], "fold_c_index_ci_high": [finite_or_none(v) for v in highs],
            "split_sizes": [len(f) for f in folds], "best_epoch": cfg.epochs, "best_val": float("nan"), "trainable_params": trainable,
            "epochs": cfg.epochs}


def _run_wsi(plan: Plan, ctx: RunContext) -> ResultRow:
    started = time.perf_counter()
    cfg, spec, card = plan.cfg, plan.spec, plan.card
    assert isinstance(cfg, WsiConfig) and card.slides is not None, "a slide plan carries a WsiConfig and a slide card"
    root = dataset_root(card, ctx.data_dir)
    records = read_table(card, root)
    s = card.slides
    grids = ensure_tiles(card, ctx.data_dir, records)
    bags, transfer, digest = _bags(plan, ctx, records, grids)
    scores = _classify(plan, ctx, records, bags) if cfg.task == "wsi-abmil" else _survival(plan, ctx, records, bags)
    return ResultRow.model_validate({
        **provenance.row_identity(cfg, spec, card, plan.weights.label, plan.run_key, digest),
        "task": cfg.task,
        "strategy": "frozen",
        "decoder": "abmil",
        "input_size": plan.size,
        "blocks": [spec.depth - 1],
        "inference": f"tiles {s.tile_px}px@{s.mpp}um",
        "transfer": transfer,
        "engine": None if ctx.endpoint else plan.engine,
        "tiles": sum(len(g) for g in grids.values()),
        **scores,
        **provenance.row_provenance(time.perf_counter() - started, ctx.device, None if ctx.endpoint else precision(ctx.device, autocast(plan.dtype))),
    })
