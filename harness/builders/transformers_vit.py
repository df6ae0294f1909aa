"""Backbones built from a Hugging Face ``transformers`` config class (Phikon, Phikon-v2, Midnight, Hibou)."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from harness.builders.base import TokenExtractor, tokens_to_grid
from harness.spec import ModelSpec

#: Constructor kwargs that are not config fields.
_MODEL_KWARGS = ("add_pooling_layer",)


def build(spec: ModelSpec) -> nn.Module:
    module_name, _, cls_name = spec.constructor.rpartition(".")
    if module_name != "transformers":
        raise ValueError(f"transformers builder expects 'transformers.<Class>', got {spec.constructor!r}")
    transformers = importlib.import_module("transformers")
    model_cls = getattr(transformers, cls_name)
    config_cls = getattr(transformers, cls_name.replace("Model", "Config"))
    model_kwargs = {k: v for k, v in spec.kwargs.items() if k in _MODEL_KWARGS}
    config = config_cls(**{k: v for k, v in spec.kwargs.items() if k not in _MODEL_KWARGS})
    config._attn_implementation = "sdpa"
    return model_cls(config, **model_kwargs)


class TransformersExtractor(TokenExtractor):
    """Reads ``hidden_states`` and applies the model's final ``layernorm`` to each tapped block."""

    def _tokens(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        out = self.backbone(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
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

    from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

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
