"""Segmentation decoders that read served token grids ``[B, L, h, w, D]``.

``transunet`` is the reference decoder (TransUNet's DecoderCup without skips, as the
DenseBench code builds it): conv3x3(D->512)+BN+ReLU, then four blocks of
[bilinear upsample, (conv3x3+BN+ReLU) x 2] with 256, 128, 64, 16 channels, and a
conv3x3 head. The first three blocks upsample x2 and the last by ``patch / 8``
(2 for patch 16, 1.75 for patch 14, 1 for patch 8), so the logits come out at the
input resolution. The reference upsamples with ``nn.UpsamplingBilinear2d`` (corners
aligned); ``align_corners`` chooses (the ``densebench`` preset: aligned). ``linear`` is a 1x1 conv on the tokens, upsampled bilinearly.
Several tapped blocks are concatenated along channels.

With ``skip_channels`` (the CNN adapter) the first three blocks concatenate a CNN feature
map after upsampling, as TransUNet's decoder does: every block then upsamples x2 and the
decoder map is resized to the skip's size first (patch 14 and 8 grids do not land on the
CNN's 1/8, 1/4, 1/2 maps by doubling alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import DECODERS, DecoderName
from harness.errors import ConfigError


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, scale: float, skip: int = 0, align_corners: bool = False) -> None:
        super().__init__()
        self.scale, self.align_corners = scale, align_corners
        self.convs = nn.Sequential(_conv_bn_relu(cin + skip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=self.align_corners)
        if skip is not None:
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, skip.to(x.dtype)], dim=1)
        return self.convs(x)


def _to_nchw(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, L, h, w, D]`` -> ``[B, L*D, h, w]`` (float32)."""
    b, n_blocks, h, w, d = tokens.shape
    return tokens.float().permute(0, 1, 4, 2, 3).reshape(b, n_blocks * d, h, w)


class TransUNetDecoder(nn.Module):
    channels = (256, 128, 64, 16)

    def __init__(self, in_dim: int, num_classes: int, patch_size: int, skip_channels: tuple[int, int, int] | None = None,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.root = _conv_bn_relu(in_dim, 512)
        scales = (2.0, 2.0, 2.0, 2.0 if skip_channels else patch_size / 8)
        skips = (*(skip_channels or (0, 0, 0)), 0)
        cins = (512, *self.channels[:-1])
        self.blocks = nn.ModuleList(_UpBlock(ci, co, s, k, align_corners) for ci, co, s, k in zip(cins, self.channels, scales, skips))
        self.head = nn.Conv2d(self.channels[-1], num_classes, 3, padding=1)

    def forward(self, tokens: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``tokens`` ``[B, L, h, w, D]``; ``skips`` the CNN maps at 1/8, 1/4, 1/2 (CNN adapter only)."""
        x = self.root(_to_nchw(tokens))
        out_hw = (x.shape[-2] * self.patch_size, x.shape[-1] * self.patch_size)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if skips is not None and i < len(skips) else None)
        x = self.head(x)
        if x.shape[-2:] != out_hw:  # rounding of fractional scales on odd grids
            x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
        return x


class LinearDecoder(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm = nn.BatchNorm2d(in_dim)
        self.head = nn.Conv2d(in_dim, num_classes, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.head(self.norm(_to_nchw(tokens)))
        return F.interpolate(x, scale_factor=self.patch_size, mode="bilinear", align_corners=False)


def build_decoder(name: DecoderName | str, embed_dim: int, n_blocks: int, num_classes: int, patch_size: int, align_corners: bool = False) -> nn.Module:
    """``align_corners``: the transunet blocks' upsampling (the reference's ``UpsamplingBilinear2d``: True)."""
    if name not in DECODERS:
        raise ConfigError(f"unknown decoder '{name}'", f"use one of {', '.join(DECODERS)}")
    if name == "transunet":
        return TransUNetDecoder(embed_dim * n_blocks, num_classes, patch_size, align_corners=align_corners)
    return LinearDecoder(embed_dim * n_blocks, num_classes, patch_size)
