"""Build a :class:`TokenExtractor` from a :class:`ModelSpec`, one module per library family.

``build_extractor(spec, weights)`` is the only entry point: it checks the packages the
spec pins, constructs the real architecture (random init seeded, so two processes
build identical untrained weights), loads weights if given, and wraps it in the
family's extractor. Families: ``timm``, ``transformers``, ``open_clip`` and ``custom``
(one entry per architecture in :mod:`harness.models.builders.custom`).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import NamedTuple

import torch
from torch import nn

from harness.models.builders import custom, open_clip_tower, timm_vit, transformers_vit
from harness.models.builders.base import TokenExtractor
from harness.errors import PackageError, SpecError
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights, load_into

Rename = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class Family(NamedTuple):
    build: Callable[[ModelSpec], nn.Module]
    extractor: Callable[[ModelSpec, nn.Module], TokenExtractor]
    rename: Rename | None


_FAMILIES = {
    "timm": Family(timm_vit.build, timm_vit.TimmExtractor, None),
    "transformers": Family(transformers_vit.build, transformers_vit.TransformersExtractor, transformers_vit.rename_keys),
    "open_clip": Family(open_clip_tower.build, open_clip_tower.OpenClipExtractor, None),
}


def family(spec: ModelSpec) -> Family:
    """The builder, extractor and checkpoint renamer for ``spec``."""
    if spec.builder == "custom":
        if spec.constructor not in custom.CONSTRUCTORS:
            raise SpecError(f"models/{spec.name}/Dockerfile", f"unknown custom constructor {spec.constructor!r}; "
                            f"known: {', '.join(custom.CONSTRUCTORS)} (harness/models/builders/custom.py)")
        return Family(*custom.CONSTRUCTORS[spec.constructor])
    return _FAMILIES[spec.builder]


def check_packages(spec: ModelSpec) -> None:
    """Fail with a one-line fix if a package the spec pins is missing or at another version."""
    for package, wanted in spec.packages.items():
        try:
            found: str | None = metadata.version(package)
        except metadata.PackageNotFoundError:
            found = None
        if found != wanted:
            raise PackageError(spec.name, package, wanted, found)


def build_backbone(spec: ModelSpec, init_seed: int = 0) -> nn.Module:
    """The bare architecture, randomly initialised from ``init_seed``.

    Under ``with torch.device("meta"):`` nothing is allocated: that is how the tests
    count the parameters of the giants.
    """
    check_packages(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return family(spec).build(spec)


def build_extractor(spec: ModelSpec, weights: ResolvedWeights | None = None) -> TokenExtractor:
    """Backbone + weights + the family's token extractor, in eval mode."""
    weights = weights or ResolvedWeights.random()
    backbone = build_backbone(spec, init_seed=weights.init_seed)
    fam = family(spec)
    if weights.path is not None:
        renamer = fam.rename
        rename = None if renamer is None else (lambda state: renamer(backbone, state))
        load_into(backbone, weights.path, spec, rename=rename)
    return fam.extractor(spec, backbone).eval()


__all__ = ["Family", "TokenExtractor", "build_backbone", "build_extractor", "check_packages", "family"]
