"""Train a whole :class:`~harness.adapt.strategies.Segmenter` (PFM + adapter + decoder) on images.

The loop of the reference (protocol.md): Adam with coupled weight decay over the
trainable parameters, the preset's schedule stepped per epoch, Dice loss, gradient
clipping, fp16 autocast with a GradScaler on a GPU, validation after every epoch and the
best state kept by the preset's selection metric (strict ``>``).

Training images come from :func:`harness.data.augment.training_images`: the resized split,
or the originals augmented per (seed, epoch, sample).

Resumable: after every epoch a checkpoint (trainable state, optimiser, scaler, the data
order generator, the RNG, the best state so far and the history) is written atomically.
Given the checkpoint, the loop continues at the next epoch and ends where an
uninterrupted run would have ended (same data order, same random draws).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness.adapt.strategies import Segmenter, trainable_parameters, trainable_state
from harness.config import RunConfig
from harness.data.augment import TrainImages
from harness.data.loader import SplitArrays
from harness.train.checkpoint import load_checkpoint, save_checkpoint
from harness.train.frozen import dice_loss, epoch_batches, epoch_record, set_epoch_lr

EventFn = Callable[[str, dict], None]


@dataclass
class AdaptedResult:
    best_epoch: int
    best_val: float
    history: list[dict[str, float]]
    resumed_from: int | None
    trainable: int
    step_s: float  # median seconds per optimiser step (this process)
    earlier_wall_s: float  # time spent on this run by processes before this one (resumed runs)
    model: Segmenter = field(repr=False)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


def predict(model: Segmenter, images: np.ndarray, batch_size: int, device: torch.device, amp: bool = True) -> np.ndarray:
    """Argmax class maps of uint8 ``[N, S, S, 3]`` images."""
    model.eval()
    out = []
    with torch.inference_mode(), _autocast(device, amp):
        for i in range(0, len(images), batch_size):
            x = model.extractor.preprocess(torch.from_numpy(images[i:i + batch_size]).to(device))
            out.append(model(x).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def predict_logits(model: Segmenter, images: np.ndarray, device: torch.device, amp: bool = True) -> np.ndarray:
    """Float logits ``[N, C, S, S]`` of a window batch (sliding-window inference)."""
    model.eval()
    with torch.inference_mode(), _autocast(device, amp):
        x = model.extractor.preprocess(torch.from_numpy(np.ascontiguousarray(images)).to(device))
        return model(x).float().cpu().numpy()


def train_step(model: Segmenter, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[torch.nn.Parameter],
               images: torch.Tensor, target: torch.Tensor, grad_clip: float | None, ignore_index: int = 255, amp: bool = True) -> float:
    """One optimiser step on a uint8 image batch: forward (fp16 autocast on a GPU), Dice loss, scaled backward,
    clipping, Adam, scaler update. Returns the loss; on a GPU it returns once the step has finished."""
    device = images.device
    with _autocast(device, amp):
        logits = model(model.extractor.preprocess(images))
    loss = dice_loss(logits.float(), target, ignore_index)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()
    value = loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value


def train_adapted(
    cfg: RunConfig,
    model: Segmenter,
    train: TrainImages,
    val: SplitArrays,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    checkpoint: Path | None = None,
    on_event: EventFn | None = None,
) -> AdaptedResult:
    emit = on_event or (lambda kind, data: None)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, best_val, best_epoch, history, wall_before = 0, -1.0, -1, [], 0.0
    best_state = trainable_state(model)
    resumed_from = None
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None:
        missing = set(state["model"]) - set(model.state_dict())
        if missing:
            raise RuntimeError(f"checkpoint {checkpoint} does not fit this model (e.g. {sorted(missing)[0]})")
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        start, best_val, best_epoch = state["epoch"] + 1, state["best_val"], state["best_epoch"]
        best_state, history, wall_before = state["best_state"], state["history"], state["train_wall_s"]
        resumed_from = start
    n_train = trainable_parameters(model)
    emit("start", {"epochs": cfg.epochs, "resumed_from": resumed_from, "trainable": n_train})
    started = time.perf_counter()
    step_times: list[float] = []
    for epoch in range(start, cfg.epochs):
        lr = set_epoch_lr(opt, epoch, cfg)
        model.train()
        losses = []
        for idx in epoch_batches(len(train), cfg.batch_size, gen):
            t0 = time.perf_counter()
            batch_images, batch_masks = train.batch(idx, epoch)
            images = torch.from_numpy(batch_images).to(device)
            target = torch.from_numpy(batch_masks).long().to(device)
            losses.append(train_step(model, opt, scaler, params, images, target, cfg.grad_clip, ignore_index, cfg.amp))
            step_times.append(time.perf_counter() - t0)
        record = epoch_record(epoch, losses, lr, predict(model, val.images, cfg.batch_size, device, cfg.amp), val.masks, num_classes, ignore_index)
        if record["val_" + cfg.select_metric] > best_val:  # strict >: ties keep the earlier epoch, as the reference
            best_val, best_epoch, best_state = record["val_" + cfg.select_metric], epoch, trainable_state(model)
        history.append(record)
        if checkpoint is not None:
            save_checkpoint({
                "epoch": epoch, "model": trainable_state(model), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "generator": gen.get_state(), "rng": torch.get_rng_state(), "best_val": best_val, "best_epoch": best_epoch,
                "best_state": best_state, "history": history, "train_wall_s": wall_before + time.perf_counter() - started,
            }, checkpoint)
        emit("epoch", {**record, "step_s": float(np.median(step_times)) if step_times else None})
    model.load_state_dict(best_state, strict=False)
    model.eval()
    return AdaptedResult(best_epoch, best_val, history, resumed_from, n_train,
                         float(np.median(step_times)) if step_times else float("nan"), wall_before, model)
