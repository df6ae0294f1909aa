"""The training job: what ``pfmbench train RUN_DIR`` runs, inside the model's image or as a local process.

A run directory is the job's whole interface, so the same code runs in a container
(with the directory bind-mounted) and on the host:

=================  ==========================================================
``job.json``       written by the harness: the config and where things are
``checkpoint.pt``  written by the job after every epoch (atomically)
``best.pt``        the selected trainable state, written at the end
``result.json``    the finished :class:`~harness.results.schema.ResultRow`
=================  ==========================================================

Progress goes to stdout as one JSON object per line after the :data:`EVENT_PREFIX`
marker; the harness turns them into a progress bar. A job whose ``result.json`` exists
has finished: running it again returns that row without training.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from harness.config import RunConfig
from harness.results.schema import ResultRow
from harness.train.adapted import EventFn
from harness.util.devices import precision, resolve_device

EVENT_PREFIX = "@pfmbench "
JOB_FILE, CHECKPOINT_FILE, BEST_FILE, RESULT_FILE = "job.json", "checkpoint.pt", "best.pt", "result.json"


class JobSpec(BaseModel):
    """Everything the job needs, with paths as the job sees them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: RunConfig
    run_key: str
    weights: str  # "random" or a checkpoint file
    weights_label: str  # what the row records ("random" / "sha256:...")
    data_dir: str
    card: dict  # the dataset card itself: images carry no cards, and the job must read the card the harness planned with
    image_digest: str | None = None
    device: str | None = None  # default: cuda if available


def stdout_events(kind: str, data: dict) -> None:
    """The job's event channel: one marked JSON line per event, flushed at once."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": kind, **data}, default=float) + "\n")
    sys.stdout.flush()


def parse_event(line: str) -> dict | None:
    """The event on a line of job output, or None for ordinary output."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        return json.loads(line[len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None


def run_job(run_dir: Path, emit: EventFn = stdout_events) -> ResultRow:
    """Train, select, test and write ``result.json``; resumes from ``checkpoint.pt`` if there is one."""
    from harness.adapt.strategies import build_segmenter, trainable_state
    from harness.data.augment import training_images
    from harness.data.cards import DatasetCard
    from harness.models.builders import build_extractor
    from harness.models.spec import get_spec, resolve_blocks, spec_for_preset
    from harness.models.weights import ResolvedWeights
    from harness.run.plan import input_size_for
    from harness.run.scoring import load_splits, make_row, score_test, train_originals
    from harness.train.adapted import predict, predict_logits, train_adapted
    from harness.train.checkpoint import save_checkpoint
    from harness.util.atomic import atomic_write_json

    started = time.perf_counter()
    job = JobSpec.model_validate_json((run_dir / JOB_FILE).read_text())
    done = run_dir / RESULT_FILE
    if done.is_file():
        emit("done", {"resumed_from": "finished"})
        return ResultRow.model_validate_json(done.read_text())
    cfg = job.config
    spec, card = spec_for_preset(get_spec(cfg.model), cfg.preset), DatasetCard.model_validate(job.card)
    blocks = resolve_blocks(cfg.blocks or spec.blocks, spec.depth)
    size = input_size_for(cfg.input_size, card, spec, cfg.preset)  # as the harness planned it
    device = torch.device(resolve_device(job.device))
    weights = ResolvedWeights.random(cfg.init_seed) if job.weights == "random" else ResolvedWeights(kind="dir", path=Path(job.weights), sha256=job.weights_label.removeprefix("sha256:"), init_seed=cfg.init_seed)
    torch.manual_seed(cfg.seed)  # decoder and adapter init: the same in a fresh process and in this one
    model = build_segmenter(build_extractor(spec, weights), cfg.strategy, cfg.decoder, card.num_classes, blocks,
                            impl=cfg.adapter_impl, rank=cfg.lora_rank, alpha=cfg.lora_alpha, cnn_unused_stage=cfg.cnn_unused_stage,
                            align_corners=cfg.align_corners)
    data, parts = load_splits(card, size, Path(job.data_dir), cfg.resize)
    train = training_images(cfg.augment, size, cfg.seed, (data["train"].images, data["train"].masks), lambda: train_originals(card, parts))
    result = train_adapted(cfg, model, train, data["val"], card.num_classes, card.ignore_index, device,
                           checkpoint=run_dir / CHECKPOINT_FILE, on_event=emit)
    save_checkpoint({"model": trainable_state(result.model), "best_epoch": result.best_epoch, "best_val": result.best_val}, run_dir / BEST_FILE)
    emit("test", {"inference": cfg.inference})
    report, instances = score_test(
        cfg, card, data, parts, size,
        resized=lambda images: predict(result.model, images, cfg.batch_size, device, cfg.amp),
        windows=lambda tiles: predict_logits(result.model, tiles, device, cfg.amp),
    )
    row = make_row(cfg, spec, card, job.weights_label, blocks, size, data, report, result.best_epoch, result.best_val,
                   transfer="none", digest=job.image_digest, wall=result.earlier_wall_s + time.perf_counter() - started,
                   instance_scores=instances, trainable=result.trainable, step_s=result.step_s, key=job.run_key,
                   device=str(device), precision=precision(str(device), "fp16-amp" if cfg.amp else "fp32"),
                   adapted_modules=model.adapted_modules if cfg.strategy in ("lora", "dora") else None)
    atomic_write_json(done, row.model_dump(mode="json"))
    emit("done", {"mDice": row.mDice, "best_epoch": row.best_epoch})
    return row

