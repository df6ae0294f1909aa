"""Train a decoder on frozen token grids, select it on validation, score it on test.

The backbone is not here: val/test features were extracted once through the runtime (the
reference's val/test transform is a plain resize). Training features are cached too with
``augment=none``, so every epoch costs only the decoder; with augmentation each epoch's
augmented batches go through the runtime as training reaches them (``TrainFeatures``). This is the ``frozen``
strategy of the reference protocol; losses, optimiser and schedule follow
``protocol.md`` and are set by :class:`~harness.config.RunConfig`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from harness.adapt.decoders import build_decoder
from harness.config import RunConfig
from harness.metrics.segmentation import SegmentationReport, evaluate, per_image_confusion, scores
from harness.util.pipeline import ahead


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice over softmax probabilities, per image and class (background included), averaged.

    As the reference ``DiceLoss``, except that ignore-index pixels are masked out
    instead of crashing ``one_hot`` (protocol.md, bug 6).
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()
    onehot = F.one_hot(target.clamp(max=num_classes - 1).long(), num_classes).permute(0, 3, 1, 2).float() * valid
    probs = logits.softmax(1) * valid
    inter = (probs * onehot).sum((2, 3))
    denom = probs.sum((2, 3)) + onehot.sum((2, 3))
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def lr_factor(epoch: int, cfg: RunConfig) -> float:
    """Learning-rate multiplier of a 0-based epoch.

    ``densebench`` is the reference's ``CosineAnnealingWithWarmup`` (``utils/scheduler.py``),
    stepped once per epoch: factor ``epoch / warmup`` during warm-up (so the first epoch runs
    at LR 0), then ``(1 + cos(pi (epoch - warmup) / (T_max - warmup))) / 2`` with ``T_max``
    fixed at 100 whatever the epoch count (so LR reaches 0 at epoch 100 and rises after).
    ``cosine`` warms up linearly from ``1 / warmup`` and anneals to 0 exactly at the last epoch.
    """
    w = cfg.warmup_epochs
    if cfg.schedule == "densebench":
        if w and epoch < w:
            return epoch / w
        return 0.5 * (1 + math.cos(math.pi * (epoch - w) / ((cfg.cosine_t_max or 100) - w)))
    if w and epoch < w:
        return (epoch + 1) / w
    span = max(1, cfg.epochs - w)
    return 0.5 * (1 + math.cos(math.pi * (epoch - w) / span))


def set_epoch_lr(opt: torch.optim.Optimizer, epoch: int, cfg: RunConfig) -> float:
    """Set the preset schedule's learning rate of ``epoch`` on every parameter group; returns it."""
    lr = cfg.lr * lr_factor(epoch, cfg)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def epoch_batches(n: int, batch_size: int, gen: torch.Generator):
    """Index batches of one epoch: a fresh permutation from ``gen``, cut in order, each sorted."""
    order = torch.randperm(n, generator=gen).numpy()
    for i in range(0, n, batch_size):
        yield np.sort(order[i:i + batch_size])


def epoch_record(epoch: int, losses: list[float], lr: float, val_pred: np.ndarray, val_masks: np.ndarray, num_classes: int,
                 ignore_index: int) -> dict[str, float]:
    """One history entry: mean loss, learning rate and the validation scores (``val_<metric>``)."""
    val_scores = scores(per_image_confusion(val_pred, val_masks, num_classes, ignore_index).sum(0))
    return {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"), "lr": lr, **{f"val_{k}": v for k, v in val_scores.items()}}


#: Batches of the feature cache read ahead: the next one is gathered from the memory map (disk, then a copy) and
#: pinned while the device runs this one.
PREFETCH_DEPTH = 2


@dataclass
class SplitFeatures:
    tokens: np.ndarray  # fp16 [N, L, h, w, D], in memory or a read-only memory map of the feature cache
    masks: np.ndarray  # uint8 [N, S, S]
    prefetch = PREFETCH_DEPTH

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, indices: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The same features every epoch (``augment=none``, or a val/test split)."""
        return self.tokens[indices], self.masks[indices]


class TrainFeatures(Protocol):
    """A training split's token grids by batch and epoch: cached (:class:`SplitFeatures`) or extracted online from augmented images."""

    prefetch: int

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class FrozenResult:
    test: SegmentationReport | None  # None when the caller scores test itself (slide inference)
    best_epoch: int
    best_val: float
    history: list[dict[str, float]]
    decoder: torch.nn.Module  # the selected (best-validation) decoder, in eval mode
    test_pred: np.ndarray | None = None  # uint8 [N, S, S] argmax on the resized test split


ProgressFn = Callable[[int, dict[str, float]], None]


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor of ``a``; a slice of a read-only memory map (the feature cache) is copied into memory first."""
    return torch.from_numpy(a if a.flags.writeable else np.array(a))


def host_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """``a`` as a tensor ready to go to ``device``: in pinned memory for a GPU, so the copy is asynchronous."""
    t = as_tensor(a)
    return t.pin_memory() if device.type == "cuda" else t


def on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True)


def _predict(decoder: torch.nn.Module, tokens: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    decoder.eval()
    out = []
    starts = range(0, len(tokens), batch_size)
    with torch.inference_mode():
        for batch in ahead(lambda i: host_tensor(tokens[i:i + batch_size], device), starts, PREFETCH_DEPTH, name="prefetch"):
            out.append(decoder(on_device(batch, device)).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def train_frozen(
    cfg: RunConfig,
    train: TrainFeatures,
    val: SplitFeatures,
    test: SplitFeatures | None,
    num_classes: int,
    patch_size: int,
    ignore_index: int = 255,
    on_epoch: ProgressFn | None = None,
    device: str = "cpu",
) -> FrozenResult:
    """Train on ``device`` (a resolved one: ``cpu``, ``cuda:N``), batches fed from the cache through pinned memory, one ahead."""
    torch.manual_seed(cfg.seed)
    n_blocks, embed_dim = val.tokens.shape[1], val.tokens.shape[-1]
    dev = torch.device(device)
    decoder = build_decoder(cfg.decoder, embed_dim, n_blocks, num_classes, patch_size, cfg.align_corners).to(dev)
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_val, best_epoch, best_state = -1.0, -1, copy.deepcopy(decoder.state_dict())
    history = []
    for epoch in range(cfg.epochs):
        lr = set_epoch_lr(opt, epoch, cfg)
        decoder.train()
        losses = []
        def gather(idx: np.ndarray, epoch: int = epoch) -> tuple[torch.Tensor, torch.Tensor]:
            tokens, masks = train.batch(idx, epoch)
            return host_tensor(tokens, dev), host_tensor(masks, dev)

        batches = ahead(gather, epoch_batches(len(train), cfg.batch_size, gen), train.prefetch, name="prefetch")
        for tokens, masks in batches:
            logits = decoder(on_device(tokens, dev))
            loss = dice_loss(logits, on_device(masks, dev).long(), ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
        record = epoch_record(epoch, losses, lr, _predict(decoder, val.tokens, cfg.batch_size, dev), val.masks, num_classes, ignore_index)
        if record["val_" + cfg.select_metric] > best_val:  # strict >, as the reference: ties keep the earlier epoch
            best_val, best_epoch, best_state = record["val_" + cfg.select_metric], epoch, copy.deepcopy(decoder.state_dict())
        history.append(record)
        if on_epoch:
            on_epoch(epoch, record)
    decoder.load_state_dict(best_state)
    decoder.eval()
    if test is None:
        return FrozenResult(None, best_epoch, best_val, history, decoder)
    test_pred = _predict(decoder, test.tokens, cfg.batch_size, dev)
    report = evaluate(per_image_confusion(test_pred, test.masks, num_classes, ignore_index), n_boot=cfg.n_bootstrap, seed=cfg.seed)
    return FrozenResult(report, best_epoch, best_val, history, decoder, test_pred)
