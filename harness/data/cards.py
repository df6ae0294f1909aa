"""Dataset cards: one YAML file per dataset, validated by a pydantic model.

A card is the contract between a dataset's original release and the harness: where it
comes from and under which licence, its classes, how its files are laid out, how it is
split, and the input size the reference protocol trains it at. ``pfmbench data`` and
the loaders read nothing else about a dataset.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import constants
from harness.errors import CardError, ConfigError, UnknownDatasetError, first_problem
from harness.util.registry import FileRegistry


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


#: What a dataset is for: dense masks, one label per image (ROI classification; the
#: retrieval card is an ROI set scored by nearest neighbours only), or whole slides with a
#: label or a survival time per slide (GPFM's slide-level tasks, read by :mod:`harness.slides`).
CardTask = Literal["segmentation", "roi-classification", "roi-retrieval", "wsi-classification", "wsi-survival"]
WSI_CARD_TASKS = ("wsi-classification", "wsi-survival")
#: How a raw annotation becomes class indices (see :class:`MaskRule`).
Encoding = Literal["index", "binary", "from-group", "channels", "instance-class", "polygons"]


class Layout(_Strict):
    """Where the files of the user's download are, as patterns relative to the dataset root.

    ``{id}`` names one sample; other placeholders (``{split}``, ``{group}``, ``{fold}``)
    capture path parts and are available to the split and mask rules; ``{ext}`` matches
    any image extension. For ``npy`` there is no ``{id}``: every row of the matched array
    file is a sample.
    """

    images: str
    masks: str | None = Field(default=None, description="mask pattern; none for image-folder (the {group} folder is the label)")
    exclude: str | None = Field(default=None, description="regex of paths that match `images` but are not images (masks beside them)")

    @field_validator("images", "masks")
    @classmethod
    def _placeholders(cls, v: str | None) -> str | None:
        if v is None:
            return v
        for name in re.findall(r"{([^}]*)}", v):
            if not re.fullmatch(r"[a-z_]+", name):
                raise ValueError(f"placeholder {{{name}}} must be lower-case letters")
        if v.count("{id}") > 1:
            raise ValueError("'{id}' may appear once")
        return v

    def fields(self, which: Literal["images", "masks"]) -> list[str]:
        return re.findall(r"{([a-z_]+)}", getattr(self, which) or "")


class MaskRule(_Strict):
    """How the original annotation becomes a mask of class indices.

    - ``index``: pixel values are class indices (``values`` remaps raw values first).
    - ``binary``: every non-zero value is class 1 (instance maps, 0/255 masks).
    - ``from-group``: foreground takes the class named by the ``{group}`` folder (``groups``).
    - ``channels``: one channel per class (``channels[i]`` = class of channel i, null = none); non-zero wins.
    - ``instance-class``: an instance map plus a per-instance class vector (``key``, ``class_key``, ``id_key``).
    - ``polygons``: rasterised polygons; ``values`` maps a polygon's class name to a class, absent = 1.
    """

    encoding: Encoding = "index"
    key: str | None = Field(default=None, description="array name inside a .mat / .npz, or the channel of an RGB mask")
    class_key: str | None = None
    id_key: str | None = None
    channel: int | None = Field(default=None, ge=0, description="read one channel of a multi-channel mask")
    values: dict[int | str, int] = Field(default_factory=dict, description="raw value (or polygon class name) -> class index")
    groups: dict[str, int] = Field(default_factory=dict, description="from-group: folder name -> class index")
    channels: tuple[int | None, ...] = ()


class Expected(_Strict):
    files: int | None = Field(default=None, gt=0, description="number of samples; null where no source states it")
    sha256: dict[str, str] = Field(default_factory=dict, description="relative path -> published sha256")


class Split(_Strict):
    """``seeded``: pooled, shuffled with ``seed``, cut at ``ratios`` (the reference's 70/20/10).
    ``official``: the release's own split from the ``{split}`` placeholder (``official`` maps folder
    values to train/val/test); with no val part, val is cut from train with the seeded val share."""

    rule: Literal["seeded", "official"] = "seeded"
    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)
    seed: int = 42
    official: dict[str, Literal["train", "val", "test"]] = Field(default_factory=dict)

    @field_validator("ratios")
    @classmethod
    def _sum_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(v) - 1.0) > 1e-6 or min(v) <= 0:
            raise ValueError(f"train/val/test ratios must be > 0 and sum to 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _official_has_parts(self) -> Split:
        if self.rule == "official" and not {"train", "test"} <= set(self.official.values()):
            raise ValueError("an official split must map folder values to at least train and test")
        return self


class Slides(_Strict):
    """A slide card's table and tiling (format ``slides``; ``layout.images`` is the slide path with ``{id}`` = slide id).

    The table is a CSV under the dataset root, one row per slide. A case (a patient) may
    have several slides: splits and folds are cut by case so no patient is on both sides.
    Classification scores one bag per slide; survival one bag per case (its slides' tiles
    together), as survival is a property of the patient.
    """

    table: str = Field(default="labels.csv", description="CSV relative to the dataset root, one row per slide")
    case_column: str = "case_id"
    slide_column: str = "slide_id"
    label_column: str | None = Field(default=None, description="the slide's class name (wsi-abmil)")
    time_column: str | None = Field(default=None, description="follow-up time, >= 0, any unit (wsi-survival)")
    event_column: str | None = Field(default=None, description="1: the event (death, recurrence) was observed; 0: censored")
    tile_px: int = Field(default=512, gt=0, description="tile edge in pixels at the target resolution (GPFM: 512)")
    mpp: float = Field(default=0.5, gt=0, description="target microns per pixel of a tile (GPFM: level 0 of 20x slides, ~0.5)")
    min_tissue: float = Field(default=0.5, gt=0, le=1, description="share of a tile that tissue detection must cover to keep it")
    folds: int = Field(default=5, ge=2, description="wsi-survival: cross-validation folds over cases (GPFM: 5)")
    cases: int | None = Field(default=None, gt=0, description="number of cases where a source states it")

    @property
    def survival(self) -> bool:
        return bool(self.time_column and self.event_column)


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
    task: CardTask = "segmentation"
    title: str
    description: str
    source: Source
    derivation: str = Field(description="how the original annotation becomes the semantic mask")
    modality: str
    classes: tuple[ClassInfo, ...] = Field(default=(), description="at least two, except on a survival-only slide card")
    ignore_index: int = 255
    format: str = Field(description="on-disk format: the name of a reader in harness.data.readers")
    layout: Layout
    mask: MaskRule = MaskRule()
    expected: Expected
    split: Split = Split()
    input_size: InputSize
    metric: Literal["mDice", "mIoU"] = "mDice"
    generator: str | None = Field(default=None, description="built-in generator that materialises this dataset")
    default_epochs: int | None = Field(default=None, gt=0, description="shorter default schedule for demo cards")
    densebench_name: str | None = Field(default=None, description="the dataset's key in the PFM-DenseBench results")
    instances: bool = Field(default=False, description="nuclei: instance metrics (PQ, AJI, detection F1) are scored")
    unverified: tuple[str, ...] = Field(default=(), description="card fields no primary source confirmed")
    slides: Slides | None = Field(default=None, description="slide cards: the label or survival table and the tiling")

    @model_validator(mode="after")
    def _classes_contiguous(self) -> DatasetCard:
        idx = [c.index for c in self.classes]
        if len(idx) < 2 and self.task != "wsi-survival":
            raise ValueError(f"a {self.task} card needs at least two classes")
        if idx != list(range(len(idx))):
            raise ValueError(f"class indices must be 0..{len(idx) - 1} in order, got {idx}")
        if self.ignore_index in idx:
            raise ValueError(f"ignore_index {self.ignore_index} collides with a class index")
        k = len(idx)
        targets = list(self.mask.values.values()) + list(self.mask.groups.values()) + [c for c in self.mask.channels if c is not None]
        bad = [t for t in targets if not (0 <= t < k or t == self.ignore_index)]
        if bad:
            raise ValueError(f"mask rule maps to {bad}, outside the classes 0..{k - 1} and ignore {self.ignore_index}")
        fields = set(self.layout.fields("images"))
        from harness.data.readers import formats, get_reader  # the readers import this module for their types

        if self.format not in formats():
            raise ValueError(f"unknown format '{self.format}'; known formats: {', '.join(formats())}")
        get_reader(self.format).check_card(self)
        if not set(self.layout.fields("masks")) <= fields:
            raise ValueError("layout.masks may only use placeholders that layout.images has")
        if self.split.rule == "official" and "split" not in fields:
            raise ValueError("an official split needs a {split} placeholder in layout.images")
        if self.mask.encoding == "from-group" and "group" not in fields:
            raise ValueError("mask encoding from-group needs a {group} placeholder in layout.images")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def check_task(self, task: str) -> None:
        """A run's task must match what the card labels: masks for segmentation, one label per image for ROI tasks,
        slides with a label (``wsi-abmil``) or a survival time (``wsi-survival``) for slide tasks."""
        if task.startswith("wsi-") or self.task in WSI_CARD_TASKS:
            self._check_slide_task(task)
            return
        if task == "segmentation" and self.task != "segmentation":
            raise ConfigError(f"'{self.name}' is an ROI card (one label per image); it has no masks to segment",
                              "use --task roi-linear or --task roi-knn")
        if task.startswith("roi-") and self.task == "segmentation":
            raise ConfigError(f"--task {task} needs an ROI card; '{self.name}' is a segmentation card",
                              "pick an ROI card ('pfmbench data list' shows each card's task)")
        if task == "roi-linear" and self.task == "roi-retrieval":
            raise ConfigError(f"'{self.name}' is a retrieval card, scored by nearest neighbours only", "use --task roi-knn")

    def _check_slide_task(self, task: str) -> None:
        if self.slides is None:
            raise ConfigError(f"--task {task} needs a slide card; '{self.name}' is a {self.task} card",
                              "pick a slide card ('pfmbench data list' shows each card's task)")
        if not task.startswith("wsi-"):
            raise ConfigError(f"'{self.name}' is a slide card; --task {task} reads tiles or images",
                              "use --task wsi-abmil or --task wsi-survival")
        if task == "wsi-abmil" and not (self.slides.label_column and self.num_classes >= 2):
            raise ConfigError(f"'{self.name}' has no slide labels (a survival card)", "use --task wsi-survival")
        if task == "wsi-survival" and not self.slides.survival:
            raise ConfigError(f"'{self.name}' has no survival times", "use --task wsi-abmil")

    def card_hash(self) -> str:
        fields = self.model_dump(mode="json")
        if fields["slides"] is None:  # cards older than slide cards keep their hash (and their rows their run keys)
            del fields["slides"]
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
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


_CARDS: FileRegistry[DatasetCard] = FileRegistry("*.yaml", lambda p: p.stem, load_card_file, UnknownDatasetError, lambda: constants.CARDS_DIR)


def list_cards(cards_dir: Path | None = None) -> list[str]:
    return _CARDS.names(folder=cards_dir)


def get_card(name: str, cards_dir: Path | None = None) -> DatasetCard:
    """The card ``name``; :class:`UnknownDatasetError` lists the known cards."""
    return _CARDS.get(name, cards_dir)
