"""What a distillation run is: student, teachers, loss weights, schedules, data. Flat, frozen, hashed.

Two presets. ``gpfm`` is GPFM's recipe (``distill_vitl14_192M_exclude_split1.yaml`` over
DINOv2's defaults; ``docs/gpfm.md`` lists each value and its source): a ViT-L/14 student,
UNI, Phikon and CONCH teachers, 65,536 prototypes, batch 96 per GPU. ``tiny`` keeps
every loss term and schedule but shrinks the student, the head and the crops so a CPU
runs a few hundred steps in minutes (the tests and the demo).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.models.spec import ModelSpec

Preset = Literal["gpfm", "tiny"]

#: 1 GPFM epoch is 1250 iterations (``OFFICIAL_EPOCH_LENGTH``); schedules below are in steps.
GPFM_EPOCH = 1250

PRESETS: dict[str, dict[str, object]] = {
    "gpfm": {
        "student_constructor": "vit_large_patch14_dinov2", "embed_dim": 1024, "depth": 24, "num_heads": 16, "drop_path": 0.4,
        "teachers": ("uni", "phikon", "conch"),
        "cls_weights": {"uni": 1.0, "phikon": 0.5, "conch": 1.0}, "patch_weights": {"uni": 0.25, "phikon": 0.125, "conch": 0.0},
        "prototypes": 65536, "head_hidden": 2048, "head_bottleneck": 256, "local_crops": 8,
        "batch_size": 96, "steps": 500 * GPFM_EPOCH, "warmup_steps": 40 * GPFM_EPOCH, "teacher_temp_warmup_steps": 30 * GPFM_EPOCH,
        "freeze_last_layer_steps": GPFM_EPOCH,
    },
    "tiny": {
        "student_constructor": "vit_small_patch14_dinov2", "embed_dim": 192, "depth": 4, "num_heads": 3, "drop_path": 0.0,
        "teachers": ("phikon", "uni"),
        "cls_weights": {"phikon": 0.5, "uni": 1.0}, "patch_weights": {"phikon": 0.125, "uni": 0.25},
        "prototypes": 1024, "head_hidden": 256, "head_bottleneck": 64, "local_crops": 2,
        "batch_size": 4, "steps": 300, "warmup_steps": 30, "teacher_temp_warmup_steps": 30, "freeze_last_layer_steps": 10,
    },
}


class DistillConfig(BaseModel):
    """Everything that determines a distillation run's weights (and, marked, two things that do not)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Preset = "tiny"
    dataset: str = "nuclei-sample"
    max_images: int | None = Field(default=None, gt=0, description="use the first N training images only")
    seed: int = 0
    # student: a DINOv2-style ViT built by timm, so the exported model is a plain timm spec
    student_constructor: str
    embed_dim: int = Field(gt=0)
    depth: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    patch_size: int = 14
    drop_path: float = Field(ge=0, lt=1)
    # teachers: served models of the zoo, final-norm CLS and patch tokens of both global crops
    teachers: tuple[str, ...] = Field(min_length=1)
    teacher_weights: str = "random"
    cls_weights: dict[str, float]
    patch_weights: dict[str, float]
    expert_bottleneck: int = 256
    patch_cos: float = 0.9
    patch_smooth_l1: float = 0.1
    # self-distillation (DINOv2): DINO + iBOT on one shared head, KoLeo on the student CLS
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    prototypes: int = Field(gt=0)
    head_hidden: int = Field(gt=0)
    head_bottleneck: int = Field(gt=0)
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_steps: int = Field(ge=0)
    center_momentum: float = 0.9
    ema_momentum: float = 0.992
    mask_probability: float = Field(default=0.5, ge=0, le=1)
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    # crops
    global_size: int = 224
    local_size: int = 98
    local_crops: int = Field(ge=0)
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    # optimisation
    batch_size: int = Field(gt=0)
    steps: int = Field(gt=0)
    base_lr: float = 4e-4  # scaled by sqrt(batch / 1024), as DINOv2
    min_lr: float = 1e-6
    warmup_steps: int = Field(ge=0)
    weight_decay: tuple[float, float] = (0.04, 0.4)
    grad_clip: float = 3.0
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    freeze_last_layer_steps: int = Field(ge=0)
    checkpoint_every: int = Field(default=50, gt=0)
    #: Fixed global views (resize + mirror, no jitter) whose teacher features are computed once.
    teacher_cache: bool = False
    #: Not part of the hash: where the teachers run.
    runtime: str = "local"

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        for name in ("cls_weights", "patch_weights"):
            missing = [t for t in self.teachers if t not in getattr(self, name)]
            if missing:
                raise ValueError(f"{name} has no weight for teacher(s) {', '.join(missing)}")
        if self.global_size % self.patch_size or self.local_size % self.patch_size:
            raise ValueError(f"crop sizes {self.global_size}/{self.local_size} must be multiples of the patch size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        return self

    @classmethod
    def from_preset(cls, preset: Preset = "tiny", **overrides: object) -> DistillConfig:
        values = dict(PRESETS[preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "teachers" in overrides and overrides["teachers"] is not None:  # weights for teachers the preset does not name: 1.0 / 0.25
            teachers: tuple[str, ...] = tuple(values["teachers"])  # type: ignore[arg-type]
            for key, default in (("cls_weights", 1.0), ("patch_weights", 0.25)):
                weights: dict[str, float] = dict(values[key])  # type: ignore[call-overload]
                values[key] = {t: weights.get(t, default) for t in teachers}
        return cls(preset=preset, **values)  # type: ignore[arg-type]

    @property
    def lr(self) -> float:
        return self.base_lr * (self.batch_size / 1024) ** 0.5

    def config_hash(self) -> str:
        data = self.model_dump(mode="json", exclude={"runtime", "checkpoint_every"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def student_spec(self, name: str = "student", weights_file: str = "model.safetensors", weights_sha256: str | None = None,
                     source: str = "local:distilled") -> ModelSpec:
        """The student as a zoo model: timm builds it from these kwargs, in training and after export alike."""
        kwargs = {"img_size": self.global_size, "patch_size": self.patch_size, "embed_dim": self.embed_dim, "depth": self.depth,
                  "num_heads": self.num_heads, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}
        return ModelSpec(
            name=name, display_name=name, source=source, license="as its teachers' licences allow (distilled student)", gated=False,
            arch=f"ViT-{self.embed_dim}d{self.depth}L/{self.patch_size} (distilled)", builder="timm", constructor=self.student_constructor,
            kwargs=kwargs, patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth, prefix_tokens=1, reg_tokens=0,
            native_input=self.global_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), blocks=(-1,),
            params_m=max(round(12 * self.depth * self.embed_dim ** 2 / 1e6, 2), 0.01), weights_file=weights_file,
            weights_sha256=weights_sha256,
        )


def resolve_distill_config(preset: str, teachers: tuple[str, ...] | None = None, **overrides: object) -> DistillConfig:
    """A :class:`DistillConfig` from CLI-level choices, with one-line errors naming the option."""
    from pydantic import ValidationError

    from harness.errors import ConfigError, option_problem
    from harness.models.spec import get_spec

    if preset not in PRESETS:
        raise ConfigError(f"unknown distillation preset '{preset}'", f"use one of {', '.join(PRESETS)}")
    for name in teachers or ():
        get_spec(name)  # an unknown teacher: the usual list of models
    try:
        return DistillConfig.from_preset(preset, teachers=teachers, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"distillation config: {option_problem(exc)}", "see 'pfmbench distill run --help'") from exc
