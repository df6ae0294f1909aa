"""One leaderboard row: spec -> weights -> runtime -> features -> decoder -> metrics -> row.

:func:`run_bench` is what ``pfmbench bench`` and ``make bench`` call. The model runs in
its runtime only while features are extracted; the runtime is stopped (on every exit
path) before the decoder trains. A row is written only after everything succeeded.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from harness import __version__
from pydantic import ValidationError

from harness.config import PRESETS, RunConfig, run_key
from harness.data.cards import DatasetCard, get_card
from harness.data.loader import SPLITS, Sample, SplitArrays, dataset_root, discover, load_originals, load_split_arrays, split
from harness.infer.sliding import sliding_window
from harness.metrics.instances import score_instances
from harness.metrics.segmentation import evaluate, per_image_confusion
from harness.errors import ConfigError
from harness.progress import progress_bar
from harness.results import provenance
from harness.results.schema import METRICS, ResultRow
from harness.results.store import write_row
from harness.runtime import Runtime, choose_runtime, make_runtime
from harness.spec import ModelSpec, get_spec, resolve_blocks
from harness.train.frozen import FrozenResult, SplitFeatures, train_frozen
from harness.weights import licence_notice, resolve_weights

log = logging.getLogger("pfmbench.bench")

EXTRACT_BATCH = 8


def extract_features(runtime: Runtime, images: np.ndarray, blocks: tuple[int, ...], batch: int = EXTRACT_BATCH, on_batch=None) -> np.ndarray:
    """Token grids of every image through ``runtime``, in batches (fp16 ``[N, L, h, w, D]``)."""
    out: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        tokens, _ = runtime.infer(images[i:i + batch], blocks)
        out.append(tokens)
        if on_batch:
            on_batch(len(tokens))
    return np.concatenate(out)


def _load_splits(card: DatasetCard, size: int, data_dir: Path | None) -> tuple[dict[str, SplitArrays], dict[str, list[Sample]]]:
    root = dataset_root(card, data_dir)
    parts = split(card, discover(card, root))
    return {name: load_split_arrays(card, parts[name], size) for name in SPLITS}, parts


def _finite(value: float) -> float | None:
    return None if value != value else float(value)  # NaN (nothing to score) is stored as null


def slide_predict(runtime: Runtime, decoder: torch.nn.Module, images: list[np.ndarray], blocks: tuple[int, ...], window: int,
                  overlap: float, blend: str, batch: int = EXTRACT_BATCH, on_batch=None) -> list[np.ndarray]:
    """Argmax class maps at the original resolution: windows through the runtime and the decoder, logits blended."""

    def predict(tiles: np.ndarray) -> np.ndarray:
        tokens, _ = runtime.infer(tiles, blocks)
        with torch.inference_mode():
            logits = decoder(torch.from_numpy(tokens)).float().numpy()
        if on_batch:
            on_batch(len(tiles))
        return logits

    logits = sliding_window(images, predict, window, overlap, blend, batch)  # type: ignore[arg-type]
    return [lg.argmax(0).astype(np.uint8) for lg in logits]


def run_bench(
    cfg: RunConfig,
    results_dir: Path | None = None,
    data_dir: Path | None = None,
    show_progress: bool = False,
    write: bool = True,
    endpoint: str | None = None,
    image: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> ResultRow:
    """Run one configuration end to end and (by default) append its row to the results store.

    ``notify`` receives one-off notices for the user (a model's licence on first use).
    """
    started = time.perf_counter()
    spec: ModelSpec = get_spec(cfg.model)
    card = get_card(cfg.dataset)
    try:
        blocks = resolve_blocks(cfg.blocks or spec.blocks, spec.depth)
    except ValueError as exc:
        raise ConfigError(f"--blocks: {exc}", f"'{spec.name}' has {spec.depth} blocks") from exc
    size = cfg.input_size or card.input_size.for_patch(spec.patch_size)
    if size % spec.patch_size:
        raise ConfigError(f"input size {size} is not a multiple of {spec.name}'s patch size {spec.patch_size}", f"use a multiple of {spec.patch_size}")
    weights = resolve_weights(spec, cfg.weights, init_seed=cfg.init_seed)
    if notify is not None and (notice := licence_notice(spec, weights)):
        notify(notice)
    data, parts = _load_splits(card, size, data_dir)
    torch.manual_seed(cfg.seed)

    runtime_kwargs = {"image": image} if image else {}
    with make_runtime(cfg.runtime, spec, weights, endpoint=endpoint, **runtime_kwargs) as runtime:
        with progress_bar(show_progress) as bar:
            total = sum(len(d.images) for d in data.values())
            task = bar.add_task(f"features {spec.name} ({runtime.name})", total=total, info=f"{size}px blocks {list(blocks)}")
            feats = {
                name: SplitFeatures(extract_features(runtime, d.images, blocks, on_batch=lambda n: bar.advance(task, n)), d.masks)
                for name, d in data.items()
            }
        transfer, digest = runtime.transfer, runtime.image_digest
        if cfg.inference == "resize":  # nothing more to extract: free the server before training
            runtime.stop()

        with progress_bar(show_progress) as bar:
            task = bar.add_task(f"train {cfg.decoder} decoder", total=cfg.epochs, info="")

            def on_epoch(epoch: int, rec: dict[str, float]) -> None:
                bar.update(task, advance=1, info=f"loss {rec['loss']:.4f} val {cfg.select_metric} {rec['val_' + cfg.select_metric]:.4f}")

            test_feats = feats["test"] if cfg.inference == "resize" else None
            result = train_frozen(cfg, feats["train"], feats["val"], test_feats, card.num_classes, spec.patch_size, card.ignore_index, on_epoch)

        if cfg.inference == "resize":
            preds, truth, true_inst = list(result.test_pred), list(data["test"].masks), data["test"].instances
        else:
            originals = load_originals(card, parts["test"])
            window = cfg.window or size
            with progress_bar(show_progress) as bar:
                task = bar.add_task(f"slide {window}px (overlap {cfg.overlap})", total=None, info="")
                preds = slide_predict(runtime, result.decoder, originals.images, blocks, window, cfg.overlap, cfg.blend,
                                      on_batch=lambda n: bar.advance(task, n))
            truth, true_inst = originals.masks, originals.instances
            result.test = evaluate(per_image_confusion(preds, truth, card.num_classes, card.ignore_index), n_boot=cfg.n_bootstrap, seed=cfg.seed)
    instance_scores = score_instances(preds, truth, true_inst, card.num_classes) if card.instances and true_inst is not None else None

    row = _make_row(cfg, spec, card, weights.label, blocks, size, data, result, transfer, digest, time.perf_counter() - started, instance_scores)
    if write:
        write_row(row, results_dir)
    return row


def _make_row(cfg, spec, card, weights_label, blocks, size, data, result: FrozenResult, transfer, digest, wall,
              instance_scores: dict[str, float] | None = None) -> ResultRow:
    rep = result.test
    assert rep is not None
    metric_cols: dict[str, float] = {}
    for m in METRICS:
        metric_cols[m] = rep.metrics[m]
        low, high = rep.ci.get(m, (float("nan"), float("nan")))
        metric_cols[f"{m}_ci_low"], metric_cols[f"{m}_ci_high"] = low, high
    return ResultRow(
        row_id=uuid.uuid4().hex[:12],
        run_key=run_key(cfg, spec.spec_hash(), card.card_hash(), weights_label, digest),
        created_at=datetime.now(timezone.utc).replace(tzinfo=None),  # naive UTC: DuckDB reads it without pytz
        model=spec.name,
        model_spec_hash=spec.spec_hash(),
        weights=weights_label,
        weights_init_seed=cfg.init_seed if weights_label == "random" else None,
        dataset=card.name,
        card_hash=card.card_hash(),
        split_sizes=[len(data[s].images) for s in SPLITS],
        strategy=cfg.strategy,
        decoder=cfg.decoder,
        preset=cfg.preset,
        seed=cfg.seed,
        epochs=cfg.epochs,
        input_size=size,
        blocks=list(blocks),
        inference=cfg.inference,
        window=(cfg.window or size) if cfg.inference == "slide" else None,
        overlap=cfg.overlap if cfg.inference == "slide" else None,
        **{k: _finite(v) for k, v in (instance_scores or {}).items()},
        runtime=cfg.runtime,
        transfer=transfer,
        image_digest=digest,
        config_hash=cfg.config_hash(),
        config_json=json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
        **metric_cols,
        class_names=card.class_names,
        per_class_iou=rep.per_class_iou,
        per_class_dice=rep.per_class_dice,
        n_bootstrap=cfg.n_bootstrap,
        best_epoch=result.best_epoch,
        best_val=result.best_val,
        harness_version=__version__,
        git_commit=provenance.git_commit(),
        package_versions=provenance.package_versions(),
        hardware=provenance.hardware(),
        wall_time_s=round(wall, 3),
        peak_rss_mb=round(provenance.peak_rss_mb(), 1),
    )


def resolve_config(model: str, dataset: str, runtime: str = "auto", preset: str = "densebench", **overrides: object) -> tuple[RunConfig, str]:
    """A full :class:`RunConfig` from CLI-level choices: preset defaults, card defaults, overrides.

    Returns the config and a sentence saying which runtime ``auto`` chose and why.
    """
    get_spec(model)  # fail fast with the list of models
    card = get_card(dataset)
    if overrides.get("epochs") is None and card.default_epochs:
        overrides["epochs"] = card.default_epochs
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'", f"use one of {', '.join(PRESETS)}")
    chosen, why = choose_runtime(runtime)  # type: ignore[arg-type]
    try:
        cfg = RunConfig.from_preset(preset, model=model, dataset=dataset, runtime=chosen, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"{option}: {first['msg']} (got {first.get('input')!r})", "see 'pfmbench bench --help' for the accepted values") from exc
    return cfg, why
