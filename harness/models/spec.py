"""A model's specification, read from the LABELs of ``models/<name>/Dockerfile``.

The Dockerfile is the single source of truth for a model: the harness has no second
list to keep in sync. Globbing ``models/*/Dockerfile`` is the registry (as timm's
``register_model`` is for timm); :func:`list_models`, :func:`get_spec` and
:func:`is_model` are the whole API.

Labels live under ``org.pfmbench.`` and use dashes (``org.pfmbench.embed-dim``);
JSON-valued labels (``kwargs``, ``mean``, ``std``, ``blocks``) hold JSON text.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from dockerfile_parse import DockerfileParser
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import constants
from harness.util.registry import FileRegistry
from harness.errors import SpecError, UnknownModelError

Builder = Literal["timm", "transformers", "open_clip", "custom"]

_JSON_FIELDS = {"kwargs", "mean", "std", "blocks", "packages", "key_map"}


class ModelSpec(BaseModel):
    """Everything the harness needs to build, serve and describe one PFM."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_]*$")
    display_name: str
    source: str = Field(description="where the weights come from: 'hf:<repo>' or a URL")
    license: str
    gated: bool
    arch: str = Field(description="architecture class for tables, e.g. 'ViT-L/16' or 'Swin-T'")
    builder: Builder
    constructor: str = Field(description="timm model name, 'transformers.<Class>', 'open_clip.CLIP' or a custom builder name")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    packages: dict[str, str] = Field(
        default_factory=dict, description="extra packages the builder imports, pinned: {name: version}; checked at build time"
    )
    patch_size: int = Field(gt=0, description="token stride in pixels (Swin: the final stage's stride)")
    embed_dim: int = Field(gt=0)
    depth: int = Field(gt=0, description="tappable blocks (ViT blocks; Swin stages)")
    prefix_tokens: int = Field(ge=0, description="CLS + register tokens before the patch grid")
    reg_tokens: int = Field(default=0, ge=0, description="register tokens among the prefix tokens")
    native_input: int = Field(gt=0)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    blocks: tuple[int, ...] = Field(default=(-1,), description="blocks tapped by default; -1 = last, after the final norm")
    params_m: float = Field(gt=0, description="published parameter count in millions (backbone, no head)")
    weights_file: str = "model.safetensors"
    weights_sha256: str | None = None
    key_map: tuple[tuple[str, str | None], ...] = Field(
        default=(),
        description="checkpoint key rewrites [regex, replacement] applied in order; a null replacement drops the key",
    )
    densebench_name: str | None = None

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("std values must be > 0")
        return v

    @field_validator("key_map")
    @classmethod
    def _key_map_compiles(cls, v: tuple[tuple[str, str | None], ...]) -> tuple[tuple[str, str | None], ...]:
        for pattern, _ in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"key-map pattern {pattern!r} is not a valid regex: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _blocks_in_range(self) -> "ModelSpec":
        resolve_blocks(self.blocks, self.depth)
        if self.reg_tokens >= max(self.prefix_tokens, 1) and self.reg_tokens:
            raise ValueError(f"reg-tokens ({self.reg_tokens}) must be fewer than prefix-tokens ({self.prefix_tokens})")
        return self

    @property
    def hub_repo(self) -> str | None:
        return self.source[3:] if self.source.startswith("hf:") else None

    def spec_hash(self) -> str:
        """A short, stable hash of the spec: changes whenever any label changes."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid for an input of ``height x width`` pixels."""
        return height // self.patch_size, width // self.patch_size


def resolve_blocks(blocks: tuple[int, ...] | list[int], depth: int) -> tuple[int, ...]:
    """Turn block indices (negative counts from the end, -1 = last) into 0-based indices.

    One helper so that ``--blocks`` means the same thing everywhere, with a range
    error that states the bounds.
    """
    if not blocks:
        raise ValueError("at least one block is needed")
    out = []
    for b in blocks:
        if not -depth <= b < depth:
            raise ValueError(f"block {b} is out of range for depth {depth}; use -{depth}..{depth - 1}")
        out.append(b % depth)
    if len(set(out)) != len(out):
        raise ValueError(f"blocks {list(blocks)} name the same block twice")
    return tuple(out)


#: What a model's name (its folder, its ``org.pfmbench.name``) may be: it is a Python-safe key in run keys, tags and paths.
NAME_RULE = "lowercase letters, digits and underscores, starting with a letter or digit (e.g. my_vit_b)"


def label_key(field: str) -> str:
    """The LABEL a spec field is written as: ``embed_dim`` -> ``org.pfmbench.embed-dim``."""
    return constants.LABEL_PREFIX + field.replace("_", "-")


def _label_problems(exc: ValidationError) -> list[str]:
    """Each pydantic problem named by its LABEL, with the value it got."""
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        where = label_key(field) if field else "the labels together"
        got = f" (got {err['input']!r})" if field and err["type"] != "missing" else ""
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{got}")
    return problems


def parse_dockerfile(path: Path) -> ModelSpec:
    """Build a :class:`ModelSpec` from one Dockerfile's ``org.pfmbench.*`` LABELs.

    Every problem is reported at once, each by its LABEL key: unknown labels (with the
    closest known one), JSON that does not parse, the name rule, and each invalid value.
    """
    import difflib

    try:
        labels = DockerfileParser(path=str(path), cache_content=True).labels
    except Exception as exc:  # the parser raises plain exceptions on unreadable files
        raise SpecError(str(path), f"cannot parse Dockerfile: {exc}") from exc
    known = {label_key(f): f for f in ModelSpec.model_fields}
    fields: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in labels.items():
        if not key.startswith(constants.LABEL_PREFIX):
            continue
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            problems.append(f"unknown label {key}" + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        field = known[key]
        if field in _JSON_FIELDS:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                problems.append(f"{key} is not valid JSON: {exc.msg} (got {value!r})")
                continue
        fields[field] = value
    if not fields and not problems:
        raise SpecError(str(path), f"no {constants.LABEL_PREFIX}* labels found")
    folder = path.parent.name
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", folder):
        suggestion = re.sub(r"[^a-z0-9_]", "_", folder.lower()).lstrip("_")
        problems.append(f"the model name {folder!r} breaks the name rule: {NAME_RULE}; rename the folder and {label_key('name')} to {suggestion!r}")
    elif fields.get("name") != folder:
        problems.append(f"{label_key('name')}={fields.get('name')!r} must equal the folder name {folder!r}")
    try:
        spec = ModelSpec(**fields)
    except ValidationError as exc:
        problems += [p for p in _label_problems(exc) if not p.startswith(f"{label_key('name')}: String should match")]
        spec = None
    if problems:
        raise SpecError(str(path), f"{len(problems)} problem{'s' if len(problems) > 1 else ''}: " + "; ".join(problems))
    assert spec is not None
    return spec


_MODELS: FileRegistry[ModelSpec] = FileRegistry("*/Dockerfile", lambda p: p.parent.name, lambda p: parse_dockerfile(p), UnknownModelError,
                                              lambda: constants.MODELS_DIR)


def list_models(pattern: str = "*", models_dir: Path | None = None) -> list[str]:
    """Names of the models whose Dockerfile exists, filtered by a glob pattern."""
    return _MODELS.names(pattern, models_dir)


def is_model(name: str, models_dir: Path | None = None) -> bool:
    return _MODELS.contains(name, models_dir)


def get_spec(name: str, models_dir: Path | None = None) -> ModelSpec:
    """The spec of model ``name``; :class:`UnknownModelError` lists the known ones."""
    return _MODELS.get(name, models_dir)


def spec_for_preset(spec: ModelSpec, preset: str | None) -> ModelSpec:
    """``spec`` as ``preset`` runs it: ``densebench`` normalises MUSK with ImageNet statistics, as the reference.

    The changed spec has its own hash, so its rows and cached features are keyed apart from
    the model's own normalisation; a server is told with ``--mean``/``--std``
    (:func:`harness.runtime.served.normalisation_args`).
    """
    from harness.config import DENSEBENCH_NORMALISATION

    if preset != "densebench" or spec.name not in DENSEBENCH_NORMALISATION:
        return spec
    mean, std = DENSEBENCH_NORMALISATION[spec.name]
    return spec.model_copy(update={"mean": mean, "std": std})


def render_dockerfile(spec: ModelSpec, header: str = "") -> str:
    """The ``models/<name>/Dockerfile`` of ``spec``: the inverse of :func:`parse_dockerfile`.

    Written for generated models (a distilled student); hand-written Dockerfiles carry
    comments that say why each value is what it is.
    """
    data = spec.model_dump(mode="json", exclude_defaults=False)
    lines = []
    for field, value in data.items():
        if value is None or (field in ("packages", "key_map") and not value):
            continue
        key = constants.LABEL_PREFIX + field.replace("_", "-")
        if field in _JSON_FIELDS:
            text = json.dumps(value)
            if "'" in text:
                raise ValueError(f"label {key} holds a single quote, which the Dockerfile cannot carry")
            lines.append(f"{key}='{text}'")
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            lines.append(f'{key}="{text.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"')
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return (
        f"{comments}ARG BASE_IMAGE=pfmbench/base:latest\nFROM ${{BASE_IMAGE}}\n"
        + "LABEL " + " \\\n      ".join(lines) + "\n"
        + "# The spec travels with the image: the server reads the same labels from this file.\n"
        + f"COPY Dockerfile /app/models/{spec.name}/Dockerfile\nENV PFMBENCH_MODEL={spec.name}\n"
    )
