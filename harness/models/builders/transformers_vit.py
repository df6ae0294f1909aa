"""Backbones built from a Hugging Face ``transformers`` config class (Phikon, Phikon-v2, Midnight, Hibou)."""

from __future__ import annotations

import importlib
import threading

import torch
from torch import nn

from harness.models.builders.base import TokenExtractor, tokens_to_grid
from harness.errors import SpecError
from harness.models.spec import ModelSpec

#: Constructor kwargs that are not config fields.
_MODEL_KWARGS = ("add_pooling_layer",)


def build(spec: ModelSpec) -> nn.Module:
    module_name, _, cls_name = spec.constructor.rpartition(".")
    if module_name != "transformers":
        raise SpecError(f"models/{spec.name}/Dockerfile", f"the transformers builder expects constructor 'transformers.<Class>', got {spec.constructor!r}")
    transformers = importlib.import_module("transformers")
    model_cls = getattr(transformers, cls_name)
    config_cls = getattr(transformers, cls_name.replace("Model", "Config"))
    model_kwargs = {k: v for k, v in spec.kwargs.items() if k in _MODEL_KWARGS}
    config = config_cls(**{k: v for k, v in spec.kwargs.items() if k not in _MODEL_KWARGS})
    config._attn_implementation = "sdpa"
    return model_cls(config, **model_kwargs)


def _block_list(backbone: nn.Module) -> tuple[nn.Module, str] | None:
    """Where the model keeps its blocks: ``model.layers`` (ViT in transformers 5) or ``model.encoder.layer`` (DINOv2)."""
    if isinstance(getattr(backbone, "layers", None), nn.ModuleList):
        return backbone, "layers"
    encoder = getattr(backbone, "encoder", None)
    if encoder is not None and isinstance(getattr(encoder, "layer", None), nn.ModuleList):
        return encoder, "layer"
    return None  # an unknown layout: run every block


class TransformersExtractor(TokenExtractor):
    """Reads ``hidden_states`` and applies the model's final ``layernorm`` to each tapped block.

    Blocks after the deepest tapped one are not run (the timm extractor gets the same from
    ``forward_intermediates(stop_early=True)``): the block list is cut for the duration of
    the forward, under a lock, since a server may call the extractor from more than one thread.
    """

    _lock = threading.Lock()

    def _tokens(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with self._lock:
            where = _block_list(self.backbone)
            full = getattr(*where) if where else None
            if where and full is not None:
                setattr(*where, nn.ModuleList(list(full)[: max(blocks) + 1]))
            try:
                out = self.backbone(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
            finally:
                if where:
                    setattr(*where, full)
        h, w = self.spec.grid(*x.shape[-2:])
        norm = self.backbone.layernorm
        grids, cls = [], []
        for b in blocks:
            g, c = tokens_to_grid(norm(out.hidden_states[b + 1]), self.spec.prefix_tokens, h, w)
            grids.append(g)
            cls.append(c)
        return grids, cls


def rename_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map checkpoint keys written by older transformers (``encoder.layer.0.attention.attention.query``)
    to this version's names (``layers.0.attention.q_proj``), with transformers' own rename rules.
    """
    import re

    from transformers import PreTrainedModel
    from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

    assert isinstance(model, PreTrainedModel), "the transformers builder makes PreTrainedModels"
    expected = set(model.state_dict())
    if set(state) <= expected:
        return state
    rules = [r for r in get_model_conversion_mapping(model) if isinstance(r, WeightRenaming)]
    renamed = {}
    for key, value in state.items():
        for rule in rules:
            for src, dst in zip(rule.source_patterns, rule.target_patterns):
                key = re.sub(src, dst, key)
        renamed[key] = value
    return renamed
