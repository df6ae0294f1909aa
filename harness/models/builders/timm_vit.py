"""Backbones built with ``timm.create_model`` (UNI, Virchow, H-optimus, GigaPath, ...)."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from harness.models.builders.base import TokenExtractor
from harness.models.spec import ModelSpec

#: kwargs that name a Python object; resolved before timm sees them (as in models.yaml).
_OBJECT_KWARGS = ("mlp_layer", "act_layer", "norm_layer", "embed_layer")


def _resolve(value: Any) -> Any:
    if isinstance(value, str) and value.count(".") >= 1 and value.split(".")[0] in ("timm", "torch"):
        module, _, attr = value.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    return value


def build(spec: ModelSpec) -> nn.Module:
    import timm

    kwargs = {k: (_resolve(v) if k in _OBJECT_KWARGS else v) for k, v in spec.kwargs.items()}
    return timm.create_model(spec.constructor, pretrained=False, **kwargs)


class TimmExtractor(TokenExtractor):
    """Uses timm's one feature API, ``forward_intermediates``, with the final norm applied."""

    def _tokens(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outs = self.backbone.forward_intermediates(
            x, indices=list(blocks), norm=True, output_fmt="NCHW", stop_early=True,  # no block after the deepest tapped one runs
            intermediates_only=True, return_prefix_tokens=True,
        )
        grids = [spatial.permute(0, 2, 3, 1) for spatial, _ in outs]
        cls = [prefix for _, prefix in outs]
        return grids, cls
