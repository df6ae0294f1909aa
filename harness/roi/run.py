"""One ROI task row: card -> served CLS embeddings per split -> linear probe or kNN -> metrics -> row.

The same runtimes, weights, result store and run keys as a segmentation row. The
embedding is the model's final-norm CLS token (mean patch token for models without one),
the input GPFM's ROI protocol uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import ValidationError

from harness.bench import image_digest, input_size_for
from harness.config import ROI_PRESETS, RoiConfig, run_key
from harness.data.cards import DatasetCard, get_card
from harness.data.formats import read_image
from harness.data.loader import SPLITS, Sample, dataset_root, discover, split
from harness.errors import ConfigError, DataError
from harness.metrics import finite_or_none
from harness.metrics.classification import evaluate_classification, topk_accuracy
from harness.progress import progress_bar
from harness.results import provenance
from harness.results.schema import ROI_METRICS, ResultRow
from harness.results.store import find_run, write_row
from harness.roi.heads import ProbeRecipe, knn_retrieval, train_linear_probe
from harness.runtime import Runtime, choose_runtime, make_runtime
from harness.spec import ModelSpec, get_spec
from harness.weights import licence_notice, resolve_weights

BATCH = 16


def resolve_roi_config(task: str, model: str, dataset: str, runtime: str = "auto", **overrides: object) -> tuple[RoiConfig, str]:
    """A full :class:`RoiConfig` from CLI-level choices (the ``gpfm`` preset, the card's default epochs)."""
    get_spec(model)
    card = get_card(dataset)
    card.check_task(task)
    if overrides.get("epochs") is None and card.default_epochs:
        overrides["epochs"] = card.default_epochs
    preset = str(overrides.pop("preset", None) or "gpfm")
    if preset not in ROI_PRESETS:
        raise ConfigError(f"unknown ROI preset '{preset}'", f"use one of {', '.join(ROI_PRESETS)}")
    chosen, why = choose_runtime(runtime)  # type: ignore[arg-type]
    try:
        cfg = RoiConfig.from_preset(preset, task=task, model=model, dataset=dataset, runtime=chosen, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']} (got {first.get('input')!r})",
                          "see 'pfmbench bench --help'") from exc
    return cfg, why


def roi_labels(card: DatasetCard, samples: list[Sample]) -> np.ndarray:
    """Class index of each sample, from its ``{group}`` folder."""
    groups = card.mask.groups
    out = np.empty(len(samples), np.int64)
    for i, s in enumerate(samples):
        group = s.fields.get("group", "")
        if group not in groups:
            raise DataError(f"{card.name}: {s.image}: folder '{group}' is not one of the card's classes {sorted(groups)}",
                            "move the image into a class folder, or fix the card's mask.groups")
        out[i] = groups[group]
    return out


def iter_roi_images(card: DatasetCard, samples: list[Sample], size: int, batch: int = BATCH) -> Iterator[np.ndarray]:
    """The split's images resized to ``size`` (bilinear), ``batch`` at a time, read from disk as they are needed."""
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        out = np.empty((len(chunk), size, size, 3), np.uint8)
        for i, s in enumerate(chunk):
            image = read_image(card, s.image)
            out[i] = image if image.shape[:2] == (size, size) else np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        yield out


def embed(runtime: Runtime, spec: ModelSpec, batches: Iterator[np.ndarray], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Final-norm CLS embeddings ``float32 [N, D]`` through ``runtime`` (the last block's class token)."""
    out = []
    for images in batches:
        _, cls = runtime.infer(images, (spec.depth - 1,))
        out.append(cls[:, 0].astype(np.float32))
        if on_batch:
            on_batch(len(images))
    return np.concatenate(out)


def run_roi(cfg: RoiConfig, results_dir: Path | None = None, data_dir: Path | None = None, show_progress: bool = False,
            write: bool = True, endpoint: str | None = None, image: str | None = None,
            notify: Callable[[str], None] | None = None, skip_finished: bool = False) -> ResultRow:
    """Run one ROI task end to end and (by default) append its row; mirrors :func:`harness.bench.run_bench`."""
    started = time.perf_counter()
    spec, card = get_spec(cfg.model), get_card(cfg.dataset)
    card.check_task(cfg.task)
    weights = resolve_weights(spec, cfg.weights, init_seed=cfg.init_seed)
    size = input_size_for(cfg.input_size, card, spec)
    digest = image_digest(cfg.runtime, spec, image)
    key = None if cfg.runtime == "endpoint" else run_key(cfg, spec.spec_hash(), card.card_hash(), weights.label, digest)
    if skip_finished and key and (done := find_run(key, results_dir)) is not None:
        if notify is not None:
            notify(f"skipped: run {key} already has row {done.row_id} (--rerun runs it again)")
        return done
    if notify is not None and (notice := licence_notice(spec, weights)):
        notify(notice)

    parts = split(card, discover(card, dataset_root(card, data_dir)))
    labels = {name: roi_labels(card, parts[name]) for name in SPLITS}
    runtime_kwargs = {"image": image} if image else {}
    with make_runtime(cfg.runtime, spec, weights, endpoint=endpoint, **runtime_kwargs) as runtime, progress_bar(show_progress) as bar:
        task = bar.add_task(f"CLS embeddings {spec.name} ({runtime.name})", total=sum(len(p) for p in parts.values()), info=f"{size}px")
        feats = {name: embed(runtime, spec, iter_roi_images(card, parts[name], size), lambda n: bar.advance(task, n)) for name in SPLITS}
        transfer, digest = runtime.transfer, runtime.image_digest or digest

    k = card.num_classes
    topk: dict[str, float] = {}
    if cfg.task == "roi-linear":
        recipe = ProbeRecipe(cfg.epochs, cfg.patience, cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.batch_size, cfg.seed)
        with progress_bar(show_progress) as bar:
            task = bar.add_task("linear probe", total=cfg.epochs, info="")
            result = train_linear_probe(feats["train"], labels["train"], feats["val"], labels["val"], feats["test"], k, recipe,
                                        lambda e, loss, val: bar.update(task, advance=1, info=f"loss {loss:.4f} val AUROC {val:.4f}"))
        prob, best_epoch, best_val, trainable = result.test_prob, result.best_epoch, result.best_val, result.trainable_params
    else:
        knn = knn_retrieval(feats["train"], labels["train"], feats["test"], k)
        prob, best_epoch, best_val, trainable = knn.test_prob, 0, float("nan"), 0
        topk = {f"top{n}_acc": topk_accuracy(labels["test"], knn.neighbour_labels, n, k) for n in (1, 3, 5)}
    report = evaluate_classification(labels["test"], prob, n_boot=cfg.n_bootstrap, seed=cfg.seed)
    metric_cols: dict[str, float | None] = {}
    for m in ROI_METRICS:
        metric_cols[m] = finite_or_none(report.metrics[m])
        metric_cols[f"{m}_ci_low"], metric_cols[f"{m}_ci_high"] = (finite_or_none(v) for v in report.ci[m])
    row = ResultRow(
        **provenance.row_identity(cfg, spec, card, weights.label, key, digest),  # type: ignore[arg-type]
        task=cfg.task,
        split_sizes=[len(parts[s]) for s in SPLITS],
        strategy="frozen",
        decoder="linear" if cfg.task == "roi-linear" else "knn",
        epochs=cfg.epochs if cfg.task == "roi-linear" else 0,
        input_size=size,
        blocks=[spec.depth - 1],
        inference="resize",
        transfer=transfer,
        **metric_cols,
        per_class_f1=report.per_class_f1,
        **{m: finite_or_none(v) for m, v in topk.items()},
        best_epoch=best_epoch,
        best_val=best_val,
        trainable_params=trainable,
        **provenance.row_provenance(time.perf_counter() - started),  # type: ignore[arg-type]
    )
    if write:
        write_row(row, results_dir)
    return row
