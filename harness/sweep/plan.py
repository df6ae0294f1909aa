"""``pfmbench sweep --plan``: what a grid will cost, before it runs.

Per job: images per split from the card (``expected.files`` cut by the split ratios; an
official split is approximated by the same ratios),
backbone passes from the strategy, and seconds per image from one of two bases:

* ``--perf zoo.json`` (``pfmbench zoo-perf`` output on the target device): the measured
  images/s of each model, scaled to the job's input size by token count;
* otherwise FLOPs: the model's forward FLOPs at the job's size (counted on the meta
  device) at an effective :data:`EFFECTIVE_TFLOPS` (eager bf16 ViT-L on an H100, 3,317
  img/s measured, about 410 TFLOP/s).

Backbone passes per image: ``frozen`` one forward of every image (features extracted
once); ``cnn_adapter`` and ``transformer_adapter`` one forward per train/val image per
epoch (the backbone runs without gradients) plus the test forward; ``lora``, ``dora`` and
``full`` three forward-equivalents per train image per epoch (forward and backward
through the backbone), one per val image per epoch, plus test. The decoder trains in
every job: its FLOPs (counted on the meta device at the job's token grid) times three per
train image and one per val image, per epoch, are added in backbone forward-equivalents.
With a ``train-perf`` JSON (``--train-perf``), a training job's steps cost the measured
images/s of that model and strategy (scaled by token count) instead.
A card that states no file count makes its jobs cost 0 images: the plan names them
(``unknown_counts``) rather than adding a silent zero. Data loading and slide inference
are not counted: the estimate is a floor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.sweep.grid import Job, SweepSpec, expand

EFFECTIVE_TFLOPS = 410.0
#: Seconds each job costs beyond its compute: process start, imports, planning, row write (measured on CPU, docs/sweeps.md).
JOB_OVERHEAD_S = 5.0
_TRAIN_PASSES = {"frozen": 0.0, "cnn_adapter": 1.0, "transformer_adapter": 1.0, "lora": 3.0, "dora": 3.0, "full": 3.0}


@dataclass
class JobEstimate:
    label: str
    strategy: str
    images: int
    forwards: int  # forward-equivalents through the backbone (the decoder's training included)
    hours: float
    count_known: bool = True  # False: the card states no file count, so ``images`` is 0, not a measurement


@dataclass
class SweepEstimate:
    jobs: list[JobEstimate]
    basis: str
    total_hours: float
    wall_hours: float

    @property
    def longest_hours(self) -> float:
        return max((j.hours for j in self.jobs), default=0.0)

    def by_strategy(self) -> dict[str, list[JobEstimate]]:
        """The jobs grouped by strategy, in the grid's order."""
        out: dict[str, list[JobEstimate]] = {}
        for j in self.jobs:
            out.setdefault(j.strategy, []).append(j)
        return out

    @property
    def unknown_counts(self) -> list[str]:
        """The jobs whose card states no file count: their cost is missing from the totals."""
        return [j.label for j in self.jobs if not j.count_known]

    def most_expensive(self, n: int = 10) -> list[JobEstimate]:
        return sorted(self.jobs, key=lambda j: -j.hours)[:n]


@cache
def _flops(model: str, size: int) -> float:
    from harness.perf.zoo import count_flops

    return count_flops(model, size)


@cache
def _decoder_flops(decoder: str, embed_dim: int, n_blocks: int, num_classes: int, patch_size: int, size: int) -> float:
    """FLOPs of one image through the decoder at ``size`` px (its token grid), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.adapt.decoders import build_decoder

    grid = size // patch_size
    with torch.device("meta"):
        head = build_decoder(decoder, embed_dim, n_blocks, num_classes, patch_size)
        counter = FlopCounterMode(display=False)
        with counter:
            head(torch.empty(1, n_blocks, grid, grid, embed_dim))
    return float(counter.get_total_flops())


def _seconds_per_image(job: Job, size: int, perf: dict[str, dict] | None) -> float:
    if perf is not None:
        m = perf.get(job.model)
        if m is None:
            raise KeyError(job.model)
        return (size / m["size"]) ** 2 / m["images_per_s"]
    return _flops(job.model, size) / (EFFECTIVE_TFLOPS * 1e12)


def _train_seconds(job: Job, size: int, train: int, train_perf: dict[tuple[str, str], dict] | None) -> float | None:
    """Seconds of the job's training steps from a measured ``train-perf`` rate of its model and strategy (scaled by token count); None without one."""
    measured = (train_perf or {}).get((job.model, job.config.strategy))
    if measured is None or job.config.strategy == "frozen":
        return None
    return job.config.epochs * train * (size / measured["size"]) ** 2 / measured["images_per_s"]


def estimate_job(job: Job, perf: dict[str, dict] | None, train_perf: dict[tuple[str, str], dict] | None = None) -> JobEstimate:
    from harness.data.cards import get_card
    from harness.models.spec import get_spec, resolve_blocks
    from harness.run.plan import input_size_for

    card, spec = get_card(job.config.dataset), get_spec(job.model)
    n = card.expected.files or 0
    train, val, test = (round(n * r) for r in card.split.ratios)
    size = input_size_for(job.config.input_size, card, spec, job.config.preset)
    cfg = job.config
    per_image = _seconds_per_image(job, size, perf)
    n_blocks = len(resolve_blocks(cfg.blocks or spec.blocks, spec.depth))
    decoder = _decoder_flops(cfg.decoder, spec.embed_dim, n_blocks, card.num_classes, spec.patch_size, size) / _flops(job.model, size)
    measured = _train_seconds(job, size, train, train_perf)
    if cfg.strategy == "frozen":
        # augmented training batches go through the backbone every epoch; without augmentation every split once, to the cache
        extracted = val + test + cfg.epochs * train if cfg.augment != "none" else n
        backbone = extracted + decoder * cfg.epochs * 3 * train
    elif measured is not None:  # a measured optimiser step covers the backbone, adapter and decoder of the train images
        backbone = measured / per_image + cfg.epochs * val + test
    else:
        backbone = cfg.epochs * (train * (_TRAIN_PASSES[cfg.strategy] + 3 * decoder) + val) + test
    forwards = round(backbone + decoder * cfg.epochs * val)
    return JobEstimate(job.label, cfg.strategy, n, forwards, forwards * per_image / 3600, card.expected.files is not None)


def plan_sweep(spec: SweepSpec, perf_json: Path | None = None, devices: int = 1, overhead_s: float = JOB_OVERHEAD_S,
               train_perf_json: Path | None = None) -> SweepEstimate:
    """Estimated device-hours of every job (compute plus ``overhead_s``), and the wall time spread over ``devices``.

    The wall time is never below the longest job: one job runs on one device. With
    ``train_perf_json`` (``pfmbench train-perf`` on the target device) a training job's
    steps cost its measured images/s for that model and strategy instead of three forwards.
    """
    perf = None
    basis = f"FLOPs at {EFFECTIVE_TFLOPS:.0f} TFLOP/s effective (eager bf16 on an H100)"
    if perf_json is not None:
        data = json.loads(perf_json.read_text())
        rows = data["results"] if isinstance(data, dict) else data
        perf = {r["model"]: r for r in rows}
        basis = f"measured img/s in {perf_json}"
    train_perf = None
    if train_perf_json is not None:
        train_perf = {(r["model"], r["strategy"]): r for r in json.loads(train_perf_json.read_text())["results"]}
        basis += f"; training steps measured in {train_perf_json}"
    jobs = [estimate_job(j, perf, train_perf) for j in expand(spec.model_copy(update={"runtime": "inprocess"}))]  # where it runs changes no count
    for j in jobs:
        j.hours += overhead_s / 3600
    total = sum(j.hours for j in jobs)
    longest = max((j.hours for j in jobs), default=0.0)
    return SweepEstimate(jobs, basis, total, max(total / max(1, devices), longest))
