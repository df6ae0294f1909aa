"""Segmentation scoring and rows: shared by the frozen path here and the training job in a model's image.

Kept apart from :mod:`harness.run.segmentation` so the training job imports the scoring
it shares with the harness without importing the harness's launch code (no cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from harness.config import RunConfig
from harness.data.cards import DatasetCard
from harness.data.loader import SPLITS, Sample, SplitArrays, dataset_root, discover, load_originals, load_split_arrays, split
from harness.infer.sliding import sliding_window
from harness.metrics import finite_or_none
from harness.metrics.instances import score_instances
from harness.metrics.segmentation import SegmentationReport, evaluate, per_image_confusion
from harness.models.spec import ModelSpec
from harness.results import provenance
from harness.results.schema import METRICS, ResultRow

#: Window batch of slide inference (images per forward).
SLIDE_BATCH = 8


def load_splits(card: DatasetCard, size: int, data_dir: Path | None, resize: str = "pil") -> tuple[dict[str, SplitArrays], dict[str, list[Sample]]]:
    """The three splits resized to ``size`` by ``resize`` (arrays), and the samples behind them."""
    root = dataset_root(card, data_dir)
    parts = split(card, discover(card, root))
    return {name: load_split_arrays(card, parts[name], size, resize) for name in SPLITS}, parts


def train_originals(card: DatasetCard, parts: dict[str, list[Sample]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The training split at its original resolution: what augmentation crops from."""
    originals = load_originals(card, parts["train"])
    return originals.images, originals.masks


def score_test(cfg: RunConfig, card: DatasetCard, data: dict[str, SplitArrays], parts: dict[str, list[Sample]], size: int,
               resized: Callable[[np.ndarray], np.ndarray] | None = None, windows: Callable[[np.ndarray], np.ndarray] | None = None,
               resized_pred: np.ndarray | None = None, on_batch: Callable[[int], None] | None = None) -> tuple[SegmentationReport, dict[str, float] | None]:
    """Score the selected model on the test split, the way ``cfg.inference`` says.

    ``resize``: ``resized`` maps the resized test images to class maps (or they are given
    as ``resized_pred``), scored against resized labels, as the reference. ``slide``:
    ``windows`` maps a window batch to logits; windows are blended over each image at its
    original resolution and scored against the original labels.
    """
    true_inst: np.ndarray | list[np.ndarray] | None
    if cfg.inference == "resize":
        assert resized_pred is not None or resized is not None, "resize inference needs predictions or a predictor"
        preds = list(resized_pred if resized_pred is not None else resized(data["test"].images))  # type: ignore[misc]
        truth, true_inst = list(data["test"].masks), data["test"].instances
    else:
        originals = load_originals(card, parts["test"])
        assert windows is not None, "slide inference needs a window predictor"

        def predict(tiles: np.ndarray) -> np.ndarray:
            logits = windows(tiles)
            if on_batch:
                on_batch(len(tiles))
            return logits

        logits = sliding_window(originals.images, predict, cfg.window or size, cfg.overlap, cfg.blend, SLIDE_BATCH)
        preds = [lg.argmax(0).astype(np.uint8) for lg in logits]
        truth, true_inst = originals.masks, originals.instances
    report = evaluate(per_image_confusion(preds, truth, card.num_classes, card.ignore_index), n_boot=cfg.n_bootstrap, seed=cfg.seed)
    instances = score_instances(preds, truth, true_inst, card.num_classes) if card.instances and true_inst is not None else None
    return report, instances


def make_row(cfg: RunConfig, spec: ModelSpec, card: DatasetCard, weights_label: str, blocks: tuple[int, ...], size: int,
             data: dict[str, SplitArrays], rep: SegmentationReport, best_epoch: int, best_val: float, transfer: str, digest: str | None,
             wall: float, instance_scores: dict[str, float] | None = None, trainable: int | None = None, step_s: float | None = None,
             key: str | None = None, device: str = "cpu", precision: str | None = "fp32", engine: str | None = "torch",
             adapted_modules: int | None = None) -> ResultRow:
    """The result row of a finished run (test report, selection, provenance)."""
    metric_cols: dict[str, float] = {}
    for m in METRICS:
        metric_cols[m] = rep.metrics[m]
        low, high = rep.ci.get(m, (float("nan"), float("nan")))
        metric_cols[f"{m}_ci_low"], metric_cols[f"{m}_ci_high"] = low, high
    return ResultRow.model_validate({
        **provenance.row_identity(cfg, spec, card, weights_label, key, digest),
        "split_sizes": [len(data[s].images) for s in SPLITS],
        "strategy": cfg.strategy,
        "decoder": cfg.decoder,
        "epochs": cfg.epochs,
        "input_size": size,
        "blocks": list(blocks),
        "inference": cfg.inference,
        "window": (cfg.window or size) if cfg.inference == "slide" else None,
        "overlap": cfg.overlap if cfg.inference == "slide" else None,
        **{k: finite_or_none(v) for k, v in (instance_scores or {}).items()},
        "transfer": transfer,
        **metric_cols,
        "per_class_iou": rep.per_class_iou,
        "per_class_dice": rep.per_class_dice,
        "best_epoch": best_epoch,
        "best_val": best_val,
        "trainable_params": trainable,
        "adapted_modules": adapted_modules,
        "step_time_s": None if step_s is None or step_s != step_s else round(step_s, 6),
        "engine": engine,
        **provenance.row_provenance(wall, device, precision),
    })
