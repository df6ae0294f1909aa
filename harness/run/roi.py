"""The ROI tasks: card -> served CLS embeddings per split -> linear probe or kNN -> metrics -> row.

The same lifecycle (:mod:`harness.run.lifecycle`), runtimes, weights, result store and
run keys as a segmentation row. The
embedding is the model's final-norm CLS token (mean patch token for models without one),
the input GPFM's ROI protocol uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from harness.config import RoiConfig
from harness.data.cards import DatasetCard
from harness.data.formats import read_image
from harness.data.loader import SPLITS, Sample, dataset_root, discover, split
from harness.errors import DataError
from harness.metrics import finite_or_none
from harness.metrics.classification import evaluate_classification, topk_accuracy
from harness.models.spec import ModelSpec
from harness.results import provenance
from harness.results.schema import ROI_METRICS, ResultRow
from harness.roi.heads import ProbeRecipe, knn_retrieval, train_linear_probe
from harness.run.plan import Plan
from harness.run.task import RunContext
from harness.runtime import Runtime, make_runtime
from harness.util.devices import autocast, precision
from harness.util.progress import progress_bar

BATCH = 16


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
            out[i] = image if image.shape[:2] == (size, size) else np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
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


class RoiTask:
    """GPFM's ROI tasks: ``roi-linear`` (linear probe) and ``roi-knn`` (retrieval) on the frozen CLS embedding."""

    def compute(self, plan: Plan, ctx: RunContext) -> ResultRow:
        return _run_roi(plan, ctx)

    def after_write(self, plan: Plan, ctx: RunContext) -> None:
        pass  # nothing is left behind: the embeddings live in memory only


def _run_roi(plan: Plan, ctx: RunContext) -> ResultRow:
    started = time.perf_counter()
    cfg, spec, card, size, digest, key = plan.cfg, plan.spec, plan.card, plan.size, plan.image_digest, plan.run_key
    assert isinstance(cfg, RoiConfig), "an ROI plan carries a RoiConfig"
    data_dir, endpoint, show_progress = ctx.data_dir, ctx.endpoint, ctx.show_progress
    weights = plan.weights
    parts = split(card, discover(card, dataset_root(card, data_dir)))
    labels = {name: roi_labels(card, parts[name]) for name in SPLITS}
    with make_runtime(cfg.runtime, spec, weights, endpoint=endpoint, **ctx.runtime_options(plan.dtype)) as runtime, progress_bar(show_progress) as bar:
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
    row = ResultRow.model_validate({
        **provenance.row_identity(cfg, spec, card, weights.label, key, digest),
        "task": cfg.task,
        "split_sizes": [len(parts[s]) for s in SPLITS],
        "strategy": "frozen",
        "decoder": "linear" if cfg.task == "roi-linear" else "knn",
        "epochs": cfg.epochs if cfg.task == "roi-linear" else 0,
        "input_size": size,
        "blocks": [spec.depth - 1],
        "inference": "resize",
        "transfer": transfer,
        "engine": None if endpoint else plan.engine,
        **metric_cols,
        "per_class_f1": report.per_class_f1,
        **{m: finite_or_none(v) for m, v in topk.items()},
        "best_epoch": best_epoch,
        "best_val": best_val,
        "trainable_params": trainable,
        # the backbone ran on ctx.device; the head (a linear layer or kNN on a few thousand CLS vectors) on the CPU
        **provenance.row_provenance(time.perf_counter() - started, ctx.device, None if endpoint else precision(ctx.device, autocast(plan.dtype))),
    })
    return row
