"""The resolved configuration of one run, and the protocol presets it starts from.

Imports nothing heavier than pydantic (no torch): the CLI, the sweep planner and the
results store read it without loading a model library.

A :class:`RunConfig` is flat and frozen; it is stored whole in every result row, and
its hash (with the model spec, card and weights identity) is the run key. Presets are
plain dictionaries of defaults, not an inheritance tree: what a run used is written
out in full in its row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

#: The tasks a run can be (``pfmbench bench --task``); each has a :class:`harness.run.lifecycle.Task`.
TaskName = Literal["segmentation", "roi-linear", "roi-knn", "wsi-abmil", "wsi-survival"]
TASKS: tuple[str, ...] = get_args(TaskName)

Strategy = Literal["frozen", "lora", "dora", "cnn_adapter", "transformer_adapter", "full"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
#: Strategies whose backbone weights never change (it runs under no_grad, in eval mode).
FROZEN_BACKBONE = ("frozen", "cnn_adapter", "transformer_adapter")
#: Strategies that need the image itself, not only its tokens: trained by the training job.
IN_JOB = tuple(s for s in STRATEGIES if s != "frozen")

DecoderName = Literal["transunet", "linear"]
DECODERS: tuple[str, ...] = get_args(DecoderName)

#: What runs a backbone's forward: eager PyTorch (the reference), ``torch.compile``, or onnxruntime on its ONNX export.
Engine = Literal["torch", "compile", "onnx"]
ENGINES: tuple[str, ...] = get_args(Engine)

Preset = Literal["densebench", "corrected"]
#: Training augmentation (:mod:`harness.data.augment`): the reference's list, it without weather effects, or none.
Augment = Literal["none", "densebench", "histology"]
AUGMENTS: tuple[str, ...] = get_args(Augment)
Schedule = Literal["densebench", "cosine"]

#: The reference code's values (protocol.md), quirks included.
PRESETS: dict[str, dict[str, object]] = {
    "densebench": {
        "epochs": 150, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-4, "grad_clip": 5.0,
        "warmup_epochs": 2, "schedule": "densebench", "cosine_t_max": 100, "select_metric": "mIoU",
        "inference": "resize", "adapter_impl": "densebench", "lora_rank": 16, "lora_alpha": 1.0, "cnn_unused_stage": True,
        "augment": "densebench", "align_corners": True, "resize": "cv2",
    },
    # Same recipe with the schedule bugs fixed and selection on the headline metric.
    "corrected": {
        "epochs": 150, "batch_size": 8, "lr": 1e-3, "weight_decay": 1e-4, "grad_clip": 5.0,
        "warmup_epochs": 2, "schedule": "cosine", "cosine_t_max": None, "select_metric": "mDice",
        "inference": "slide", "adapter_impl": "peft", "lora_rank": 16, "lora_alpha": 16.0, "cnn_unused_stage": False,
        "augment": "histology", "align_corners": False, "resize": "pil",
    },
}

#: Models the reference's LoRA/DoRA leave unadapted (protocol.md, bug 1): it wraps only timm ``Attention``
#: modules of the models it names, so the HF-transformers models (phikon, phikon_v2, hibou_l, midnight),
#: MUSK (BEiT3) and PathOrchestra (timm, not in its list) train as frozen. Their published LoRA and DoRA
#: cells are frozen runs (mean LoRA - frozen: -0.0004 mDice); ``adapter_impl: densebench`` reproduces that.
REFERENCE_UNADAPTED = frozenset({"phikon", "phikon_v2", "hibou_l", "midnight", "musk", "pathorchestra"})

#: Models the reference runs at one input size whatever the dataset (its website table: "MUSK always 384";
#: torchscale's BEiT3 asserts it). The ``densebench`` preset does the same; ``corrected`` uses the card's size.
DENSEBENCH_INPUT_SIZE: dict[str, int] = {"musk": 384}

#: Models the reference normalises otherwise than their own labels say (its ``get_model_normalization``:
#: ImageNet statistics for MUSK, whose own are 0.5/0.5). The ``densebench`` preset does the same.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DENSEBENCH_NORMALISATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {"musk": IMAGENET_MEAN_STD}

#: The autocast dtype of a preset's frozen extraction on a GPU: the reference's fp16 for ``densebench``;
#: bf16 elsewhere (fp32's range: no overflow). Not a config field: a CPU computes in fp32 whatever
#: the preset, so it enters a run key only through a GPU run's compute tag (:func:`harness.util.devices.compute_tag`).
PRESET_EXTRACT_DTYPE: dict[str, str] = {"densebench": "fp16", "corrected": "bf16", "gpfm": "bf16"}


def extract_dtype(preset: str) -> str:
    """The autocast dtype of ``preset``'s frozen extraction on a GPU."""
    return PRESET_EXTRACT_DTYPE.get(preset, "bf16")


def _preset_values(presets: dict[str, dict[str, object]], preset: str, overrides: dict[str, object]) -> dict[str, object]:
    """A preset's defaults with the overrides that were given (None: not given) on top."""
    return {**presets[preset], **{k: v for k, v in overrides.items() if v is not None}}


class _RunBase(BaseModel):
    """What every task's configuration has: the model, the data, the weights, the seeds, and its hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    dataset: str
    weights: str = "random"
    init_seed: int = 0
    seed: int = 42
    n_bootstrap: int = Field(default=1000, ge=0)
    #: Not part of the run key: where the model runs does not change the numbers.
    runtime: str = "local"

    def config_hash(self) -> str:
        data = self.model_dump(mode="json", exclude={"runtime"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class RunConfig(_RunBase):
    """Everything that determines a segmentation run's numbers."""

    strategy: Strategy = "frozen"
    decoder: DecoderName = "transunet"
    preset: Preset = "densebench"
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    grad_clip: float | None = Field(gt=0)
    warmup_epochs: int = Field(ge=0)
    schedule: Schedule
    cosine_t_max: int | None
    select_metric: Literal["mIoU", "mDice"]
    blocks: tuple[int, ...] | None = None
    input_size: int | None = None
    #: Training augmentation, seeded per (seed, epoch, sample). A ``frozen`` run with augmentation
    #: extracts each epoch's augmented training batches online (val/test features stay cached).
    augment: Augment = "none"
    #: Test-time inference: ``resize`` (the reference: images and labels resized to the input size)
    #: or ``slide`` (windows at the original resolution, logits blended, original labels).
    inference: Literal["resize", "slide"] = "resize"
    window: int | None = Field(default=None, gt=0, description="slide window in px (default: the input size)")
    overlap: float = Field(default=0.2, ge=0, lt=1)
    blend: Literal["gaussian", "linear", "uniform"] = "gaussian"
    #: LoRA / DoRA: ``densebench`` = the reference's modules (scale = alpha, scalar DoRA magnitude),
    #: ``peft`` = standard peft (scale = alpha / rank, per-column magnitude).
    adapter_impl: Literal["densebench", "peft"] = "densebench"
    lora_rank: int = Field(default=16, gt=0)
    lora_alpha: float = Field(default=1.0, gt=0)
    #: The val/test (and ``augment=none`` training) resize: OpenCV linear as the reference, or PIL's antialiased bilinear.
    resize: Literal["cv2", "pil"] = "pil"
    #: Decoder upsampling with corners aligned (the reference's ``UpsamplingBilinear2d``) or not (``F.interpolate``'s default).
    align_corners: bool = False
    #: CNN adapter: build the reference's third ResNet stage (trainable, never used).
    cnn_unused_stage: bool = True
    #: Mixed precision (fp16 autocast + GradScaler) for the training job; only on a GPU.
    amp: bool = True

    @classmethod
    def from_preset(cls, preset: Preset = "densebench", **overrides: object) -> RunConfig:
        return cls(preset=preset, **_preset_values(PRESETS, preset, overrides))  # type: ignore[arg-type]


RoiTask = Literal["roi-linear", "roi-knn"]

#: GPFM's ROI protocol (``ROI_tasks/linear.py``, ``scripts/linear.sh``).
ROI_PRESETS: dict[str, dict[str, object]] = {
    "gpfm": {"epochs": 3000, "patience": 100, "lr": 5e-4, "min_lr": 1e-5, "weight_decay": 1e-5, "batch_size": 256},
}


class _GpfmHead(_RunBase):
    """What GPFM's heads on frozen embeddings share (ROI probe, slide ABMIL): one preset, an epoch cap with early stopping."""

    preset: Literal["gpfm"] = "gpfm"
    epochs: int = Field(gt=0)
    patience: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    input_size: int | None = None


class RoiConfig(_GpfmHead):
    """An ROI task run (GPFM's linear probe or kNN retrieval on the frozen CLS embedding).

    The probe fields are ignored by ``roi-knn``, which has nothing to train.
    """

    task: RoiTask
    min_lr: float = Field(ge=0)
    batch_size: int = Field(gt=0)

    @classmethod
    def from_preset(cls, preset: Literal["gpfm"] = "gpfm", **overrides: object) -> RoiConfig:
        return cls(preset=preset, **_preset_values(ROI_PRESETS, preset, overrides))  # type: ignore[arg-type]


WsiTask = Literal["wsi-abmil", "wsi-survival"]

#: GPFM's slide-level protocol: ABMIL (``att_mil``) on 512 px tile embeddings; Adam, lr 2e-4, weight decay 1e-4
#: (``train_scripts/UBC-OCEAN.sh``). The epoch cap, patience, widths and dropout are CLAM's defaults, which
#: GPFM's trainer derives from (unverified); ``batch_size`` is the bags per Cox step of wsi-survival.
WSI_PRESETS: dict[str, dict[str, object]] = {
    "gpfm": {"epochs": 100, "patience": 20, "lr": 2e-4, "weight_decay": 1e-4, "hidden": 512, "attention": 256, "dropout": 0.25,
             "batch_size": 16},
}


class WsiConfig(_GpfmHead):
    """A slide-level run: gated-attention MIL on a slide's tile embeddings, for a class (``wsi-abmil``) or a risk (``wsi-survival``).

    ``wsi-abmil`` stops early on the validation loss (patience); ``wsi-survival`` trains
    ``epochs`` on each cross-validation fold (there is no validation part, as GPFM's 5 folds).
    """

    task: WsiTask
    hidden: int = Field(gt=0)
    attention: int = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    batch_size: int = Field(gt=1)

    @classmethod
    def from_preset(cls, preset: Literal["gpfm"] = "gpfm", **overrides: object) -> WsiConfig:
        return cls(preset=preset, **_preset_values(WSI_PRESETS, preset, overrides))  # type: ignore[arg-type]


def run_key(config: RunConfig | RoiConfig | WsiConfig, spec_hash: str, card_hash: str, weights_label: str, image_digest: str | None = None,
            compute_tag: str = "") -> str:
    """Identity of a run: same key, same numbers (given the same code).

    ``compute_tag`` (:func:`harness.util.devices.compute_tag`) sets a GPU's rows apart; it
    is empty on a CPU, whose keys are what they were before devices were recorded.
    """
    parts = [config.config_hash(), spec_hash, card_hash, weights_label, image_digest or ""] + ([compute_tag] if compute_tag else [])
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
