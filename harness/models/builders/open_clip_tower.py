"""Vision towers of OpenCLIP models (CONCH's trunk; any CLIP-style PFM).

``open_clip.CLIP(**kwargs)`` builds the whole model from the config in the spec's
``kwargs`` (``embed_dim``, ``vision_cfg``, ``text_cfg``); the tower ``model.visual`` is
the backbone. Stock OpenCLIP creates a timm trunk with timm's defaults only, while
forks such as CONCH's pass more (a 448 px ``img_size``, ``dynamic_img_size``): those go
in ``trunk_kwargs`` and the trunk is created again with them, which is what the fork
does. Both tower kinds (``TimmModel`` and OpenCLIP's own ``VisionTransformer``) expose
``forward_intermediates``, so one extractor serves both.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness.models.builders.base import TokenExtractor
from harness.errors import SpecError
from harness.models.spec import ModelSpec


def build(spec: ModelSpec) -> nn.Module:
    import open_clip
    import timm

    if spec.constructor != "open_clip.CLIP":
        raise SpecError(f"models/{spec.name}/Dockerfile", f"the open_clip builder expects constructor 'open_clip.CLIP', got {spec.constructor!r}")
    cfg = copy.deepcopy(spec.kwargs)
    trunk_kwargs = cfg.pop("trunk_kwargs", None)
    model = open_clip.CLIP(**cfg)
    visual = model.visual
    if trunk_kwargs is not None:
        name = cfg.get("vision_cfg", {}).get("timm_model_name")
        if not name:
            raise SpecError(f"models/{spec.name}/Dockerfile", "kwargs.trunk_kwargs needs a timm vision tower (vision_cfg.timm_model_name)")
        visual.trunk = timm.create_model(name, pretrained=False, **trunk_kwargs)
    return visual


class OpenClipExtractor(TokenExtractor):
    """``visual.forward_intermediates`` with the tower's final norm applied to every tapped block."""

    def _tokens(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        out = self.backbone.forward_intermediates(
            x, indices=list(blocks), normalize_intermediates=True, intermediates_only=True,
            output_fmt="NCHW", output_extra_tokens=True,
        )
        grids = [g.permute(0, 2, 3, 1) for g in out["image_intermediates"]]
        cls = list(out["image_intermediates_prefix"])
        return grids, cls
