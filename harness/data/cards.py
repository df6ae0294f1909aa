"""Dataset cards: one YAML file per dataset, validated by a pydantic model.

A card is the contract between a dataset's original release and the harness: where it
comes from and under which licence, its classes, how its files are laid out, how it is
split, and the input size the reference protocol trains it at. ``pfmbench data`` and
the loaders read nothing else about a dataset.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import constants
from harness.errors import CardError, UnknownDatasetError, first_problem


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Strict):
    url: str
    license: str
    citation: str


class ClassInfo(_Strict):
    index: int = Field(ge=0, le=254)
    name: str
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$", description="display colour, #rrggbb")


class Layout(_Strict):
    """Relative paths with an ``{id}`` placeholder, e.g. ``images/{id}.png``."""

    images: str
    masks: str

    @field_validator("images", "masks")
    @classmethod
    def _has_id(cls, v: str) -> str:
        if v.count("{id}") != 1:
            raise ValueError("must contain '{id}' exactly once")
        return v


class Expected(_Strict):
    files: int = Field(gt=0, description="number of image/mask pairs")


class Split(_Strict):
    rule: Literal["seeded"] = "seeded"
    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)
    seed: int = 42

    @field_validator("ratios")
    @classmethod
    def _sum_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(v) - 1.0) > 1e-6 or min(v) <= 0:
            raise ValueError(f"train/val/test ratios must be > 0 and sum to 1, got {list(v)}")
        return v


class InputSize(_Strict):
    """The reference rule: one square size per dataset, a multiple of the patch size."""

    patch14: int = Field(gt=0, multiple_of=14)
    patch16: int = Field(gt=0, multiple_of=16)

    def for_patch(self, patch: int) -> int:
        if patch == 14:
            return self.patch14
        if patch == 16:
            return self.patch16
        return max(patch, round(self.patch16 / patch) * patch)


class DatasetCard(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    title: str
    description: str
    source: Source
    derivation: str = Field(description="how the original annotation becomes the semantic mask")
    modality: str
    classes: tuple[ClassInfo, ...] = Field(min_length=2)
    ignore_index: int = 255
    format: Literal["png-pairs"]
    layout: Layout
    expected: Expected
    split: Split = Split()
    input_size: InputSize
    metric: Literal["mDice", "mIoU"] = "mDice"
    generator: str | None = Field(default=None, description="built-in generator that materialises this dataset")
    default_epochs: int | None = Field(default=None, gt=0, description="shorter default schedule for demo cards")

    @model_validator(mode="after")
    def _classes_contiguous(self) -> "DatasetCard":
        idx = [c.index for c in self.classes]
        if idx != list(range(len(idx))):
            raise ValueError(f"class indices must be 0..{len(idx) - 1} in order, got {idx}")
        if self.ignore_index in idx:
            raise ValueError(f"ignore_index {self.ignore_index} collides with a class index")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def card_hash(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_card_file(path: Path) -> DatasetCard:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CardError(str(path), f"not readable YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(raw, dict):
        raise CardError(str(path), "the top level must be a mapping")
    if raw.get("name") != path.stem:
        raise CardError(str(path), f"name {raw.get('name')!r} must equal the file name {path.stem!r}")
    try:
        return DatasetCard(**raw)
    except ValidationError as exc:
        raise CardError(str(path), first_problem(exc)) from exc


def _card_files(cards_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(cards_dir.glob("*.yaml"))}


def list_cards(cards_dir: Path | None = None) -> list[str]:
    return list(_card_files(cards_dir or constants.CARDS_DIR))


@lru_cache(maxsize=None)
def _cached(path: Path, mtime: float) -> DatasetCard:
    return load_card_file(path)


def get_card(name: str, cards_dir: Path | None = None) -> DatasetCard:
    """The card ``name``; :class:`UnknownDatasetError` lists the known cards."""
    files = _card_files(cards_dir or constants.CARDS_DIR)
    if name not in files:
        raise UnknownDatasetError(name, sorted(files))
    return _cached(files[name], files[name].stat().st_mtime)
