"""One leaderboard row: spec -> weights -> runtime -> features -> decoder -> metrics -> row.

:func:`run_bench` is what ``pfmbench bench`` and ``make bench`` call. For ``frozen`` the
model runs in its runtime only while features are extracted (and, for slide inference,
while the test split is scored); the runtime is stopped on every exit path. The other
strategies train through the backbone in a training job (:mod:`harness.train.launch`).
A row is written only after everything succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pydantic import ValidationError

from harness.config import PRESETS, RunConfig, run_key
from harness.data.cards import DatasetCard, get_card
from harness.data.loader import SPLITS, Sample, SplitArrays, dataset_root, discover, load_originals, load_split_arrays, split
from harness.infer.sliding import sliding_window
from harness.metrics import finite_or_none
from harness.metrics.instances import score_instances
from harness.metrics.segmentation import SegmentationReport, evaluate, per_image_confusion
from harness.errors import ConfigError
from harness.feature_cache import FeatureCache, FeatureKey, host_environment, pixels_hash
from harness.progress import progress_bar
from harness.results import provenance
from harness.results.schema import METRICS, ResultRow
from harness.results.store import find_run, write_row
from harness.runtime import Runtime, choose_runtime, make_runtime
from harness.spec import ModelSpec, get_spec, resolve_blocks
from harness.train.frozen import SplitFeatures, train_frozen
from harness.weights import ResolvedWeights, licence_notice, resolve_weights

log = logging.getLogger("pfmbench.bench")

EXTRACT_BATCH = 8


def iter_features(runtime: Runtime, images: Iterable[np.ndarray] | np.ndarray, blocks: tuple[int, ...], batch: int = EXTRACT_BATCH,
                  on_batch=None) -> Iterator[np.ndarray]:
    """Token grids through ``runtime``, one batch at a time (fp16 ``[b, L, h, w, D]``).

    ``images`` is an array (cut into batches of ``batch``) or any iterable of image batches,
    so a dataset larger than memory streams from its reader to the cache.
    """
    chunks = (images[i:i + batch] for i in range(0, len(images), batch)) if isinstance(images, np.ndarray) else images
    for chunk in chunks:
        tokens, _ = runtime.infer(chunk, blocks)
        if on_batch:
            on_batch(len(tokens))
        yield tokens


def load_splits(card: DatasetCard, size: int, data_dir: Path | None) -> tuple[dict[str, SplitArrays], dict[str, list[Sample]]]:
    """The three splits resized to ``size`` (arrays), and the samples behind them."""
    root = dataset_root(card, data_dir)
    parts = split(card, discover(card, root))
    return {name: load_split_arrays(card, parts[name], size) for name in SPLITS}, parts


def score_test(cfg: RunConfig, card: DatasetCard, data: dict[str, SplitArrays], parts: dict[str, list[Sample]], size: int,
               resized: Callable[[np.ndarray], np.ndarray] | None = None, windows: Callable[[np.ndarray], np.ndarray] | None = None,
               resized_pred: np.ndarray | None = None, on_batch: Callable[[int], None] | None = None) -> tuple[SegmentationReport, dict[str, float] | None]:
    """Score the selected model on the test split, the way ``cfg.inference`` says.

    ``resize``: ``resized`` maps the resized test images to class maps (or they are given
    as ``resized_pred``), scored against resized labels, as the reference. ``slide``:
    ``windows`` maps a window batch to logits; windows are blended over each image at its
    original resolution and scored against the original labels.
    """
    if cfg.inference == "resize":
        preds = list(resized_pred if resized_pred is not None else resized(data["test"].images))  # type: ignore[misc]
        truth, true_inst = list(data["test"].masks), data["test"].instances
    else:
        originals = load_originals(card, parts["test"])

        def predict(tiles: np.ndarray) -> np.ndarray:
            logits = windows(tiles)  # type: ignore[misc]
            if on_batch:
                on_batch(len(tiles))
            return logits

        logits = sliding_window(originals.images, predict, cfg.window or size, cfg.overlap, cfg.blend, EXTRACT_BATCH)
        preds = [lg.argmax(0).astype(np.uint8) for lg in logits]
        truth, true_inst = originals.masks, originals.instances
    report = evaluate(per_image_confusion(preds, truth, card.num_classes, card.ignore_index), n_boot=cfg.n_bootstrap, seed=cfg.seed)
    instances = score_instances(preds, truth, true_inst, card.num_classes) if card.instances and true_inst is not None else None
    return report, instances


@dataclass(frozen=True)
class Plan:
    """A run resolved before anything starts: what it reads and the key its row will carry."""

    cfg: RunConfig
    spec: ModelSpec
    card: DatasetCard
    blocks: tuple[int, ...]
    size: int
    weights: ResolvedWeights
    image_digest: str | None
    run_key: str | None  # None when the image is unknown (a server started elsewhere)


def plan_run(cfg: RunConfig, image: str | None = None) -> Plan:
    """Resolve model, card, blocks, input size, weights and (docker) the image: everything the run key needs."""
    spec: ModelSpec = get_spec(cfg.model)
    card = get_card(cfg.dataset)
    try:
        blocks = resolve_blocks(cfg.blocks or spec.blocks, spec.depth)
    except ValueError as exc:
        raise ConfigError(f"--blocks: {exc}", f"'{spec.name}' has {spec.depth} blocks") from exc
    size = input_size_for(cfg.input_size, card, spec)
    if cfg.strategy in ("cnn_adapter", "transformer_adapter") and len(blocks) != 1:
        raise ConfigError(f"{cfg.strategy} reads one block, got --blocks {','.join(map(str, blocks))}", "leave --blocks out (the last block)")
    if cfg.strategy == "cnn_adapter" and cfg.decoder != "transunet":
        raise ConfigError("cnn_adapter feeds CNN skips into the transunet decoder", "use --decoder transunet")
    if cfg.strategy != "frozen" and cfg.runtime == "endpoint":
        raise ConfigError(f"strategy {cfg.strategy} trains through the backbone, which a feature server cannot do",
                          "drop --endpoint (the job runs in the model's image or locally)")
    weights = resolve_weights(spec, cfg.weights, init_seed=cfg.init_seed)
    digest = image_digest(cfg.runtime, spec, image)
    key = None if cfg.runtime == "endpoint" else run_key(cfg, spec.spec_hash(), card.card_hash(), weights.label, digest)
    return Plan(cfg, spec, card, blocks, size, weights, digest, key)


def input_size_for(requested: int | None, card: DatasetCard, spec: ModelSpec) -> int:
    """The square input size: ``requested``, else the card's rule for the model's patch size; a multiple of the patch size."""
    size = requested or card.input_size.for_patch(spec.patch_size)
    if size % spec.patch_size:
        raise ConfigError(f"input size {size} is not a multiple of {spec.name}'s patch size {spec.patch_size}", f"use a multiple of {spec.patch_size}")
    return size


def image_digest(runtime: str, spec: ModelSpec, image: str | None) -> str | None:
    """The identity of the image a docker run uses (``image``, else the model's, built if missing); None for other runtimes."""
    if runtime != "docker":
        return None
    from harness.images import docker_client, ensure_image, image_identity

    return image_identity(docker_client().images.get(image) if image else ensure_image(spec.name))


def run_bench(
    cfg: RunConfig,
    results_dir: Path | None = None,
    data_dir: Path | None = None,
    show_progress: bool = False,
    write: bool = True,
    endpoint: str | None = None,
    image: str | None = None,
    notify: Callable[[str], None] | None = None,
    skip_finished: bool = False,
    feature_cache: bool = True,
) -> ResultRow:
    """Run one configuration end to end and (by default) append its row to the results store.

    ``frozen`` extracts features through the runtime and trains the decoder here; every
    other strategy is a training job (:mod:`harness.train.launch`) in the model's image,
    a local process, or this process. With ``skip_finished`` (the CLI's default), a run
    whose key already has a row is not run again: that row is returned (and ``notify``
    told), and an interrupted training job resumes from its checkpoint. Without it the
    run starts from scratch (``--rerun``, ``pfmbench reproduce``).
    ``notify`` receives one-off notices for the user (a model's licence on first use).
    With ``feature_cache`` (the default), ``frozen`` reads each split's token grids from
    :class:`~harness.feature_cache.FeatureCache` when an earlier run extracted them, and
    writes them there otherwise.
    """
    plan = plan_run(cfg, image)
    if skip_finished and plan.run_key and (done := find_run(plan.run_key, results_dir)) is not None:
        if notify is not None:
            notify(f"skipped: run {plan.run_key} already has row {done.row_id} (--rerun runs it again)")
        return done
    if notify is not None and (notice := licence_notice(plan.spec, plan.weights)):
        notify(notice)
    if cfg.strategy == "frozen":
        row = _run_frozen(plan, data_dir, show_progress, endpoint, image, FeatureCache() if feature_cache else None)
    else:
        from harness.train.launch import run_training_job

        row = run_training_job(plan, results_dir, data_dir, show_progress, image, fresh=not skip_finished)
    if write:
        write_row(row, results_dir)
        if cfg.strategy != "frozen":
            from harness.train.launch import finish_run_dir

            finish_run_dir(plan.run_key, results_dir)
    return row


def feature_keys(plan: Plan, data: dict[str, SplitArrays]) -> dict[str, FeatureKey] | None:
    """The cache key of each split's features, or None where the model's environment is unknown.

    A server started elsewhere (``--endpoint``) may run any code on any weights, so its
    features are never cached.
    """
    cfg, spec = plan.cfg, plan.spec
    if cfg.runtime == "endpoint" or (cfg.runtime == "docker" and not plan.image_digest):
        return None
    environment = plan.image_digest if cfg.runtime == "docker" else host_environment()
    weights = f"random:{plan.weights.init_seed}" if plan.weights.kind == "random" else plan.weights.label
    return {
        name: FeatureKey(spec.name, spec.spec_hash(), environment, weights, plan.card.name, plan.card.card_hash(), name,
                         pixels_hash([d.images]), plan.size, plan.blocks)
        for name, d in data.items()
    }


def _run_frozen(plan: Plan, data_dir: Path | None, show_progress: bool, endpoint: str | None, image: str | None,
                cache: FeatureCache | None) -> ResultRow:
    """The ``frozen`` strategy: features through the runtime once (or from the cache), then decoder epochs here."""
    started = time.perf_counter()
    cfg, spec, card, blocks, size = plan.cfg, plan.spec, plan.card, plan.blocks, plan.size
    data, parts = load_splits(card, size, data_dir)
    torch.manual_seed(cfg.seed)

    keys = feature_keys(plan, data) if cache is not None else None
    tokens = {name: cache.get(key) for name, key in keys.items()} if cache is not None and keys else {}
    missing = [name for name in data if tokens.get(name) is None]
    transfer, digest = "cache", None
    with contextlib.ExitStack() as stack:
        runtime: Runtime | None = None
        if missing or cfg.inference == "slide":
            runtime_kwargs = {"image": image} if image else {}
            runtime = stack.enter_context(make_runtime(cfg.runtime, spec, plan.weights, endpoint=endpoint, **runtime_kwargs))
            transfer, digest = runtime.transfer, runtime.image_digest
        if missing:
            assert runtime is not None
            with progress_bar(show_progress) as bar:
                total = sum(len(data[name].images) for name in missing)
                where = f"{runtime.name}{', to the cache' if keys else ''}"
                task = bar.add_task(f"features {spec.name} ({where})", total=total, info=f"{size}px blocks {list(blocks)}")
                for name in missing:
                    batches = iter_features(runtime, data[name].images, blocks, on_batch=lambda n: bar.advance(task, n))
                    tokens[name] = cache.put(keys[name], batches) if cache is not None and keys else np.concatenate(list(batches))
        if runtime is not None and cfg.inference == "resize":  # nothing more to extract: free the server before training
            runtime.stop()
        feats = {name: SplitFeatures(tokens[name], d.masks) for name, d in data.items()}

        with progress_bar(show_progress) as bar:
            task = bar.add_task(f"train {cfg.decoder} decoder", total=cfg.epochs, info="")

            def on_epoch(epoch: int, rec: dict[str, float]) -> None:
                bar.update(task, advance=1, info=f"loss {rec['loss']:.4f} val {cfg.select_metric} {rec['val_' + cfg.select_metric]:.4f}")

            test_feats = feats["test"] if cfg.inference == "resize" else None
            result = train_frozen(cfg, feats["train"], feats["val"], test_feats, card.num_classes, spec.patch_size, card.ignore_index, on_epoch)

        def windows(tiles: np.ndarray) -> np.ndarray:
            assert runtime is not None  # slide inference keeps the runtime
            grid, _ = runtime.infer(tiles, blocks)
            with torch.inference_mode():
                return result.decoder(torch.from_numpy(grid)).float().numpy()

        with progress_bar(show_progress and cfg.inference == "slide") as bar:
            task = bar.add_task(f"slide {cfg.window or size}px (overlap {cfg.overlap})", total=None, info="")
            report, instances = score_test(cfg, card, data, parts, size, windows=windows, resized_pred=result.test_pred,
                                           on_batch=lambda n: bar.advance(task, n))
    trainable = sum(p.numel() for p in result.decoder.parameters())
    # a shared server (--endpoint, pfmbench sweep) does not know its image: the plan does
    digest = digest or plan.image_digest
    return make_row(cfg, spec, card, plan.weights.label, blocks, size, data, report, result.best_epoch, result.best_val, transfer, digest,
                    time.perf_counter() - started, instances, trainable=trainable, key=plan.run_key)


def make_row(cfg: RunConfig, spec: ModelSpec, card: DatasetCard, weights_label: str, blocks: tuple[int, ...], size: int,
             data: dict[str, SplitArrays], rep: SegmentationReport, best_epoch: int, best_val: float, transfer: str, digest: str | None,
             wall: float, instance_scores: dict[str, float] | None = None, trainable: int | None = None, step_s: float | None = None,
             key: str | None = None) -> ResultRow:
    """The result row of a finished run (test report, selection, provenance)."""
    metric_cols: dict[str, float] = {}
    for m in METRICS:
        metric_cols[m] = rep.metrics[m]
        low, high = rep.ci.get(m, (float("nan"), float("nan")))
        metric_cols[f"{m}_ci_low"], metric_cols[f"{m}_ci_high"] = low, high
    return ResultRow(
        **provenance.row_identity(cfg, spec, card, weights_label, key, digest),
        split_sizes=[len(data[s].images) for s in SPLITS],
        strategy=cfg.strategy,
        decoder=cfg.decoder,
        epochs=cfg.epochs,
        input_size=size,
        blocks=list(blocks),
        inference=cfg.inference,
        window=(cfg.window or size) if cfg.inference == "slide" else None,
        overlap=cfg.overlap if cfg.inference == "slide" else None,
        **{k: finite_or_none(v) for k, v in (instance_scores or {}).items()},
        transfer=transfer,
        **metric_cols,
        per_class_iou=rep.per_class_iou,
        per_class_dice=rep.per_class_dice,
        best_epoch=best_epoch,
        best_val=best_val,
        trainable_params=trainable,
        step_time_s=None if step_s is None or step_s != step_s else round(step_s, 6),
        **provenance.row_provenance(wall),
    )


def resolve_config(model: str, dataset: str, runtime: str = "auto", preset: str = "densebench", **overrides: object) -> tuple[RunConfig, str]:
    """A full :class:`RunConfig` from CLI-level choices: preset defaults, card defaults, overrides.

    Returns the config and a sentence saying which runtime ``auto`` chose and why.
    """
    get_spec(model)  # fail fast with the list of models
    card = get_card(dataset)
    card.check_task("segmentation")
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
