"""CTransPath: a timm Swin-T whose patch embedding is a small convolutional stem.

The original code needs a 2021 fork of timm (0.5.4); stock timm builds the same network
once the stem is given as ``embed_layer``. Modern timm Swin stages are channels-last,
so the stem returns ``[B, H/4, W/4, C]``. The original checkpoint is converted with
timm's own Swin filter (downsample layers moved from the end of a stage to the start of
the next one, non-persistent buffers dropped).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.models.builders.base import TokenExtractor
from harness.models.spec import ModelSpec


class ConvStem(nn.Module):
    """Conv3x3/2 + BN + ReLU, Conv3x3/2 + BN + ReLU, Conv1x1, then the norm: stride 4 like Swin's patchify.

    Module names (``proj.0``, ``proj.1``, ``proj.3``, ``proj.4``, ``proj.6``, ``norm``)
    are the checkpoint's.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        strict_img_size: bool = True,
        output_fmt: str = "NHWC",
        **_: Any,
    ) -> None:
        super().__init__()
        if patch_size != 4 or embed_dim % 8:
            raise ValueError(f"ConvStem needs patch_size 4 and embed_dim divisible by 8, got {patch_size}, {embed_dim}")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.patch_size = size, (patch_size, patch_size)
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.strict_img_size = strict_img_size
        layers: list[nn.Module] = []
        in_dim, out_dim = in_chans, embed_dim // 8
        for _stage in range(2):
            layers += [nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True)]
            in_dim, out_dim = out_dim, out_dim * 2
        layers.append(nn.Conv2d(in_dim, embed_dim, 1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} does not match the stem's {self.img_size}")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def build(spec: ModelSpec) -> nn.Module:
    import timm

    return timm.create_model(spec.kwargs.get("timm_name", "swin_tiny_patch4_window7_224"), pretrained=False,
                             embed_layer=ConvStem, **{k: v for k, v in spec.kwargs.items() if k != "timm_name"})


class SwinExtractor(TokenExtractor):
    """Final-stage tokens after the final norm; the "class token" is their mean (the model's pooled output).

    A Swin's stages differ in width and stride, so only the last one (block -1) can be
    tapped into the common ``[B, L, h, w, D]`` layout.
    """

    def _tokens(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        last = self.spec.depth - 1
        if blocks != (last,):
            raise ValueError(f"{self.spec.name} can only tap its last stage (block -1): its stages differ in width and stride")
        (grid,) = self.backbone.forward_intermediates(x, indices=[last], norm=True, intermediates_only=True)
        grid = grid.permute(0, 2, 3, 1)
        return [grid], [grid.new_zeros(grid.shape[0], 0, grid.shape[-1])]


def rename_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original TransPath layout -> timm 1.x layout, with timm's own Swin checkpoint filter."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(state, model)
