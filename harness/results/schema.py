"""The one result schema: every run, whatever its model, dataset or strategy, is one such row.

Flat columns (so Parquet and DuckDB see them directly) in three groups: what ran
(identity and configuration), what came out (metrics with 95% bootstrap CIs and
per-class values), and where it came from (provenance). The full resolved
configuration is stored as JSON beside the flat fields, so a row can be re-run.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 8

#: Row tasks: dense segmentation, GPFM's ROI tasks on the frozen CLS (linear probe, kNN), and its slide tasks
#: on tile embeddings (ABMIL classification, ABMIL Cox survival).
TASKS = ("segmentation", "roi-linear", "roi-knn", "wsi-abmil", "wsi-survival")
#: Scalar metrics every segmentation row carries, each with ``<name>_ci_low`` / ``<name>_ci_high``.
METRICS = ("mIoU", "mDice", "mIoU_nobg", "mDice_nobg", "pixel_accuracy")
#: Scalar metrics every ROI row carries (macro over classes), each with 95% bootstrap CIs.
ROI_METRICS = ("macro_acc", "macro_f1", "macro_auroc")
#: Retrieval accuracy at k (a query counts when one of its k nearest training images shares its class), ``roi-knn`` rows.
TOPK_METRICS = ("top1_acc", "top3_acc", "top5_acc")
#: Instance metrics, filled for datasets whose card declares instances (nuclei), else null.
INSTANCE_METRICS = ("PQ", "DQ", "SQ", "mPQ", "AJI", "det_F1")


class ResultRow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    row_id: str
    run_key: str
    created_at: datetime  # UTC
    task: str = "segmentation"  # one of TASKS

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
    engine: str | None = None  # the backbone's forward in a frozen extraction: torch | compile | onnx (schema 5; null: a server elsewhere, or older rows)
    image_digest: str | None
    config_hash: str
    config_json: str

    # what came out (test split). Segmentation rows fill the first group, ROI rows the second.
    mIoU: float | None = None
    mDice: float | None = None
    mIoU_nobg: float | None = None
    mDice_nobg: float | None = None
    pixel_accuracy: float | None = None
    mIoU_ci_low: float | None = None
    mIoU_ci_high: float | None = None
    mDice_ci_low: float | None = None
    mDice_ci_high: float | None = None
    mIoU_nobg_ci_low: float | None = None
    mIoU_nobg_ci_high: float | None = None
    mDice_nobg_ci_low: float | None = None
    mDice_nobg_ci_high: float | None = None
    pixel_accuracy_ci_low: float | None = None
    pixel_accuracy_ci_high: float | None = None
    class_names: list[str]
    per_class_iou: list[float | None] = []
    per_class_dice: list[float | None] = []
    PQ: float | None = None
    DQ: float | None = None
    SQ: float | None = None
    mPQ: float | None = None
    AJI: float | None = None
    det_F1: float | None = None
    macro_acc: float | None = None
    macro_f1: float | None = None
    macro_auroc: float | None = None
    macro_acc_ci_low: float | None = None
    macro_acc_ci_high: float | None = None
    macro_f1_ci_low: float | None = None
    macro_f1_ci_high: float | None = None
    macro_auroc_ci_low: float | None = None
    macro_auroc_ci_high: float | None = None
    per_class_f1: list[float | None] = []
    top1_acc: float | None = None
    top3_acc: float | None = None
    top5_acc: float | None = None
    #: wsi-survival (schema 8): the mean over folds of the test fold's C-index, their standard deviation, and each
    #: fold's C-index with its 95% bootstrap interval; ``split_sizes`` then holds the cases per fold.
    c_index: float | None = None
    c_index_std: float | None = None
    fold_c_index: list[float | None] = []
    fold_c_index_ci_low: list[float | None] = []
    fold_c_index_ci_high: list[float | None] = []
    #: Slide tasks (schema 8): tiles embedded over all the card's slides.
    tiles: int | None = None
    n_bootstrap: int
    best_epoch: int
    best_val: float
    trainable_params: int | None = None  # decoder + adapter (+ backbone for full)
    step_time_s: float | None = None  # median optimiser step of the training job (None: frozen, decoder-only)
    #: LoRA/DoRA: backbone linears given an adapter. 0 where the densebench preset reproduces the reference's
    #: coverage (its LoRA/DoRA skip six models: docs/fidelity.md). Schema 7; other strategies and older rows: null.
    adapted_modules: int | None = None

    # provenance
    harness_version: str
    git_commit: str | None
    package_versions: str  # JSON object
    hardware: str
    device: str | None = None  # where the run computed: "cpu" or "cuda:N" (schema 5; older rows: null)
    gpu_model: str | None = None
    gpu_driver: str | None = None
    cuda_version: str | None = None
    torch_version: str | None = None
    precision: str | None = None  # the backbone's: fp32 on a CPU; fp16-/bf16-autocast (extraction) or fp16-amp (training job) on a GPU
    #: sha256 (16 hex) of the model's Dockerfile as the run read it, and whether that file is committed
    #: unchanged in git (False: untracked or edited; None: not in a git checkout). Schema 6; older rows: null.
    model_dockerfile_sha256: str | None = None
    model_dockerfile_committed: bool | None = None
    wall_time_s: float
    peak_rss_mb: float
