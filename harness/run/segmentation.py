"""The segmentation task: token grids -> decoder (or a training job) -> masks -> metrics -> row.

For ``frozen`` the model runs in its runtime only while features are extracted (and,
for slide inference, while the test split is scored); the runtime is stopped on every
exit path. The other strategies train through the backbone in a training job
(:mod:`harness.train.launch`). The lifecycle around it (run key, skip, row write) is
:mod:`harness.run.lifecycle`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from harness.client.feature_cache import FeatureCache, FeatureKey, pixels_hash
from harness.config import RunConfig
from harness.data.augment import TrainImages, training_images
from harness.data.loader import SplitArrays
from harness.results.schema import ResultRow
from harness.run.plan import Plan, feature_environment
from harness.run.scoring import load_splits, make_row, score_test, train_originals
from harness.run.task import RunContext
from harness.runtime import Runtime, make_runtime
from harness.serve import protocol
from harness.train.frozen import SplitFeatures, TrainFeatures, train_frozen
from harness.train.launch import finish_run_dir, run_training_job
from harness.util.devices import CPU_EXTRACT_BATCH, autocast, extraction_batch, precision
from harness.util.pipeline import ahead
from harness.util.progress import progress_bar

log = logging.getLogger("pfmbench.bench")

def iter_features(runtime: Runtime, images: Iterable[np.ndarray] | np.ndarray, blocks: tuple[int, ...], batch: int = CPU_EXTRACT_BATCH,
                  on_batch: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Token grids through ``runtime``, in order, one batch at a time (fp16 ``[b, L, h, w, D]``).

    ``images`` is an array (cut into batches of ``batch``) or any iterable of image batches,
    so a dataset larger than memory streams from its reader to the cache. A served runtime
    keeps ``runtime.in_flight`` requests going (reading and sending the next batches while
    the server computes this one); at most that many batches are held at once.
    """
    chunks = (images[i:i + batch] for i in range(0, len(images), batch)) if isinstance(images, np.ndarray) else images
    for tokens, _ in ahead(lambda chunk: runtime.infer(chunk, blocks), chunks, runtime.in_flight, name="extract"):
        if on_batch:
            on_batch(len(tokens))
        yield tokens


def feature_keys(plan: Plan, data: dict[str, SplitArrays]) -> dict[str, FeatureKey] | None:
    """The cache key of each split's features, or None where the model's environment is unknown.

    A server started elsewhere (``--endpoint``) may run any code on any weights, so its
    features are never cached. Features computed on a GPU, or by another engine than
    eager torch, are keyed apart (the plan's device, engine and autocast dtype).
    """
    spec = plan.spec
    environment = feature_environment(plan)
    if environment is None:
        return None
    return {
        name: FeatureKey(spec.name, spec.spec_hash(), environment, plan.weights.identity, plan.card.name, plan.card.card_hash(), name,
                         pixels_hash([d.images]), plan.size, plan.blocks)
        for name, d in data.items()
    }


class OnlineFeatures:
    """A frozen run's augmented training batches, through the runtime as training reaches them.

    What the reference computes: the backbone sees a fresh augmentation of every training
    image in every epoch, so these features are never cached (they would be epochs x the
    split). Val and test features still come from the cache. ``prefetch`` keeps the
    runtime's requests in flight while the decoder trains on the batch before.
    """

    def __init__(self, images: TrainImages, runtime: Runtime, blocks: tuple[int, ...]) -> None:
        self.images, self.runtime, self.blocks = images, runtime, blocks
        self.prefetch = runtime.in_flight

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        images, masks = self.images.batch(indices, epoch)
        tokens, _ = self.runtime.infer(images, self.blocks)
        return tokens, masks


class SegmentationTask:
    """Dense masks on a segmentation card: every strategy, both presets."""

    def compute(self, plan: Plan, ctx: RunContext) -> ResultRow:
        if _config(plan).strategy == "frozen":
            return _run_frozen(plan, ctx.data_dir, ctx.show_progress, ctx.endpoint, ctx.runtime_options(plan.dtype), FeatureCache() if ctx.feature_cache else None,
                               ctx.device)
        return run_training_job(plan, ctx.results_dir, ctx.data_dir, ctx.show_progress, ctx.image, fresh=ctx.fresh, device=ctx.device)

    def after_write(self, plan: Plan, ctx: RunContext) -> None:
        if _config(plan).strategy != "frozen":
            finish_run_dir(plan.run_key, ctx.results_dir)


def _present(tokens: np.ndarray | None) -> np.ndarray:
    assert tokens is not None, "every split was read from the cache or extracted"
    return tokens


def _config(plan: Plan) -> RunConfig:
    assert isinstance(plan.cfg, RunConfig), "a segmentation plan carries a RunConfig"
    return plan.cfg


def _run_frozen(plan: Plan, data_dir: Path | None, show_progress: bool, endpoint: str | None, runtime_options: dict[str, object],
                cache: FeatureCache | None, device: str = "cpu") -> ResultRow:
    """The ``frozen`` strategy: features through the runtime once (or from the cache), then decoder epochs here, on ``device``."""
    started = time.perf_counter()
    cfg, spec, card, blocks, size = _config(plan), plan.spec, plan.card, plan.blocks, plan.size
    data, parts = load_splits(card, size, data_dir, cfg.resize)
    torch.manual_seed(cfg.seed)

    online = cfg.augment != "none"  # augmented training batches go through the runtime as training reaches them
    fixed = {name: d for name, d in data.items() if not (online and name == "train")}
    keys = feature_keys(plan, fixed) if cache is not None else None
    tokens = {name: cache.get(key) for name, key in keys.items()} if cache is not None and keys else {}
    missing = [name for name in fixed if tokens.get(name) is None]
    transfer, digest = "cache", None
    with contextlib.ExitStack() as stack:
        runtime: Runtime | None = None
        if missing or online or cfg.inference == "slide":
            runtime = stack.enter_context(make_runtime(cfg.runtime, spec, plan.weights, endpoint=endpoint, **runtime_options))
            transfer, digest = runtime.transfer, runtime.image_digest
        if missing:
            assert runtime is not None
            with progress_bar(show_progress) as bar:
                total = sum(len(data[name].images) for name in missing)
                where = f"{runtime.name}{', to the cache' if keys else ''}"
                task = bar.add_task(f"features {spec.name} ({where})", total=total, info=f"{size}px blocks {list(blocks)}")
                for name in missing:
                    batches = iter_features(runtime, data[name].images, blocks, batch=extraction_batch(device, spec, size, len(blocks), protocol.MAX_BATCH),
                                             on_batch=lambda n: bar.advance(task, n))
                    tokens[name] = cache.put(keys[name], batches) if cache is not None and keys else np.concatenate(list(batches))
        if runtime is not None and cfg.inference == "resize" and not online:  # nothing more to extract: free the server before training
            runtime.stop()
        feats = {name: SplitFeatures(_present(tokens[name]), d.masks) for name, d in fixed.items()}
        train: TrainFeatures = feats["train"] if not online else OnlineFeatures(
            training_images(cfg.augment, size, cfg.seed, (data["train"].images, data["train"].masks), lambda: train_originals(card, parts)),
            runtime, blocks)  # type: ignore[arg-type]

        with progress_bar(show_progress) as bar:
            label = f"train {cfg.decoder} decoder" + (f" (augment {cfg.augment}: features through {runtime.name} each epoch)" if online and runtime else "")
            task = bar.add_task(label, total=cfg.epochs, info="")

            def on_epoch(epoch: int, rec: dict[str, float]) -> None:
                bar.update(task, advance=1, info=f"loss {rec['loss']:.4f} val {cfg.select_metric} {rec['val_' + cfg.select_metric]:.4f}")

            test_feats = feats["test"] if cfg.inference == "resize" else None
            result = train_frozen(cfg, train, feats["val"], test_feats, card.num_classes, spec.patch_size, card.ignore_index, on_epoch,
                                  device=device)

        def windows(tiles: np.ndarray) -> np.ndarray:
            assert runtime is not None  # slide inference keeps the runtime
            grid, _ = runtime.infer(tiles, blocks)
            with torch.inference_mode():
                return result.decoder(torch.from_numpy(grid).to(device)).float().cpu().numpy()

        with progress_bar(show_progress and cfg.inference == "slide") as bar:
            task = bar.add_task(f"slide {cfg.window or size}px (overlap {cfg.overlap})", total=None, info="")
            report, instances = score_test(cfg, card, data, parts, size, windows=windows, resized_pred=result.test_pred,
                                           on_batch=lambda n: bar.advance(task, n))
    trainable = sum(p.numel() for p in result.decoder.parameters())
    # a shared server (--endpoint, pfmbench sweep) does not know its image: the plan does
    digest = digest or plan.image_digest
    return make_row(cfg, spec, card, plan.weights.label, blocks, size, data, report, result.best_epoch, result.best_val, transfer, digest,
                    time.perf_counter() - started, instances, trainable=trainable, key=plan.run_key,
                    device=device, precision=None if endpoint else precision(device, autocast(plan.dtype)),  # a server elsewhere: unknown
                    engine=None if endpoint else plan.engine)
