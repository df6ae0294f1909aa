"""Segmentation decoders that read served token grids ``[B, L, h, w, D]``.

``transunet`` is the reference decoder (TransUNet's DecoderCup without skips, as the
DenseBench code builds it): conv3x3(D->512)+BN+ReLU, then four blocks of
[bilinear upsample, (conv3x3+BN+ReLU) x 2] with 256, 128, 64, 16 channels, and a
conv3x3 head. The first three blocks upsample x2 and the last by ``patch / 8``
(2 for patch 16, 1.75 for patch 14, 1 for patch 8), so the logits come out at the
input resolution. ``linear`` is a 1x1 conv on the tokens, upsampled bilinearly.
Several tapped blocks are concatenated along channels.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DecoderName = Literal["transunet", "linear"]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.convs = nn.Sequential(_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.convs(x)


def _to_nchw(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, L, h, w, D]`` -> ``[B, L*D, h, w]`` (float32)."""
    b, n_blocks, h, w, d = tokens.shape
    return tokens.float().permute(0, 1, 4, 2, 3).reshape(b, n_blocks * d, h, w)


class TransUNetDecoder(nn.Module):
    channels = (256, 128, 64, 16)

    def __init__(self, in_dim: int, num_classes: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.root = _conv_bn_relu(in_dim, 512)
        scales = (2.0, 2.0, 2.0, patch_size / 8)
        cins = (512, *self.channels[:-1])
        self.blocks = nn.ModuleList(_UpBlock(ci, co, s) for ci, co, s in zip(cins, self.channels, scales))
        self.head = nn.Conv2d(self.channels[-1], num_classes, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.root(_to_nchw(tokens))
        out_hw = (x.shape[-2] * self.patch_size, x.shape[-1] * self.patch_size)
        for block in self.blocks:
            x = block(x)
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


def build_decoder(name: DecoderName, embed_dim: int, n_blocks: int, num_classes: int, patch_size: int) -> nn.Module:
    cls = {"transunet": TransUNetDecoder, "linear": LinearDecoder}[name]
    return cls(embed_dim * n_blocks, num_classes, patch_size)
