"""Build a :class:`TokenExtractor` from a :class:`ModelSpec`, one module per library family.

``build_extractor(spec, weights)`` is the only entry point: it constructs the real
architecture (random init seeded, so two processes build identical untrained weights),
loads weights if given, and wraps it in the family's extractor.
"""

from __future__ import annotations

import torch

from harness.builders import timm_vit, transformers_vit
from harness.builders.base import TokenExtractor
from harness.spec import ModelSpec
from harness.weights import ResolvedWeights, load_into

def _same_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state


#: family -> (constructor, extractor class, checkpoint key renamer)
_FAMILIES = {
    "timm": (timm_vit.build, timm_vit.TimmExtractor, _same_keys),
    "transformers": (transformers_vit.build, transformers_vit.TransformersExtractor, transformers_vit.rename_keys),
}


def build_backbone(spec: ModelSpec, init_seed: int = 0) -> torch.nn.Module:
    """The bare architecture, randomly initialised from ``init_seed``."""
    build = _FAMILIES[spec.builder][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return build(spec)


def build_extractor(spec: ModelSpec, weights: ResolvedWeights | None = None) -> TokenExtractor:
    """Backbone + weights + the family's token extractor, in eval mode."""
    weights = weights or ResolvedWeights.random()
    backbone = build_backbone(spec, init_seed=weights.init_seed)
    _, extractor_cls, rename = _FAMILIES[spec.builder]
    if weights.path is not None:
        load_into(backbone, weights.path, spec, rename=lambda state: rename(backbone, state))
    return extractor_cls(spec, backbone).eval()


__all__ = ["TokenExtractor", "build_backbone", "build_extractor"]
