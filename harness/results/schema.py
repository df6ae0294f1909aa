"""The one result schema: every run, whatever its model, dataset or strategy, is one such row.

Flat columns (so Parquet and DuckDB see them directly) in three groups: what ran
(identity and configuration), what came out (metrics with 95% bootstrap CIs and
per-class values), and where it came from (provenance). The full resolved
configuration is stored as JSON beside the flat fields, so a row can be re-run.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 3

#: Scalar metrics every row carries, each with ``<name>_ci_low`` / ``<name>_ci_high``.
METRICS = ("mIoU", "mDice", "mIoU_nobg", "mDice_nobg", "pixel_accuracy")
#: Instance metrics, filled for datasets whose card declares instances (nuclei), else null.
INSTANCE_METRICS = ("PQ", "DQ", "SQ", "mPQ", "AJI", "det_F1")


class ResultRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    row_id: str
    run_key: str
    created_at: datetime  # UTC
    task: str = "segmentation"

    # what ran
    model: str
    model_spec_hash: str
    weights: str  # "random" or "sha256:<hex>"
    weights_init_seed: int | None
    dataset: str
    card_hash: str
    split_sizes: list[int]  # train, val, test
    strategy: str
    decoder: str
    preset: str
    seed: int
    epochs: int
    input_size: int
    blocks: list[int]
    inference: str
    window: int | None = None
    overlap: float | None = None
    runtime: str
    transfer: str
    image_digest: str | None
    config_hash: str
    config_json: str

    # what came out (test split)
    mIoU: float
    mDice: float
    mIoU_nobg: float
    mDice_nobg: float
    pixel_accuracy: float
    mIoU_ci_low: float
    mIoU_ci_high: float
    mDice_ci_low: float
    mDice_ci_high: float
    mIoU_nobg_ci_low: float
    mIoU_nobg_ci_high: float
    mDice_nobg_ci_low: float
    mDice_nobg_ci_high: float
    pixel_accuracy_ci_low: float
    pixel_accuracy_ci_high: float
    class_names: list[str]
    per_class_iou: list[float | None]
    per_class_dice: list[float | None]
    PQ: float | None = None
    DQ: float | None = None
    SQ: float | None = None
    mPQ: float | None = None
    AJI: float | None = None
    det_F1: float | None = None
    n_bootstrap: int
    best_epoch: int
    best_val: float
    trainable_params: int | None = None  # decoder + adapter (+ backbone for full)
    step_time_s: float | None = None  # median optimiser step of the training job (None: frozen, decoder-only)

    # provenance
    harness_version: str
    git_commit: str | None
    package_versions: str  # JSON object
    hardware: str
    wall_time_s: float
    peak_rss_mb: float
