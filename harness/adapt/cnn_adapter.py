"""The CNN adapter: a from-scratch ResNetV2 beside the frozen PFM, feeding skips to the decoder.

Re-implemented from the protocol description (TransUNet's R50 hybrid encoder, as the
reference's ``models/cnn_adapter.py`` uses it): a weight-standardised 7x7/2 root conv with
GroupNorm(32) and ReLU, a 3x3/2 max-pool without padding, then bottleneck units in stages
of 256, 512 and 1024 channels (``block_units`` 3, 4, 9). The decoder reads three maps:
1/8 (512 ch), 1/4 (256 ch) and 1/2 (64 ch, the root). Maps that the unpadded max-pool
leaves one pixel short are zero-padded to their nominal size as skips, as TransUNet does;
the next stage reads the unpadded map.

The reference builds the third stage and computes it, but never reads its output; its
parameters are still handed to the optimiser, so they count as trainable. The
``densebench`` preset keeps the stage (same trainable count, never run: it cannot change
a number); ``corrected`` leaves it out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Skip channels the decoder receives, deepest first.
SKIP_CHANNELS = (512, 256, 64)


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (BiT / TransUNet)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 with GroupNorm, projection shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.gn1 = StdConv2d(cin, cmid, 1, bias=False), _gn(cmid)
        self.conv2, self.gn2 = StdConv2d(cmid, cmid, 3, stride, padding=1, bias=False), _gn(cmid)
        self.conv3, self.gn3 = StdConv2d(cmid, cout, 1, bias=False), _gn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(residual + self.gn3(self.conv3(y)))


def _stage(cin: int, cout: int, units: int, stride: int) -> nn.Sequential:
    return nn.Sequential(Bottleneck(cin, cout, cout // 4, stride), *(Bottleneck(cout, cout, cout // 4) for _ in range(units - 1)))


class CNNAdapter(nn.Module):
    """ResNetV2 encoder; ``forward`` returns the skips ``[1/8, 1/4, 1/2]`` of an image batch."""

    def __init__(self, block_units: tuple[int, int, int] = (3, 4, 9), with_unused_stage: bool = True) -> None:
        super().__init__()
        self.root = nn.Sequential(StdConv2d(3, 64, 7, stride=2, padding=3, bias=False), _gn(64), nn.ReLU(inplace=True))
        self.stage1 = _stage(64, 256, block_units[0], 1)
        self.stage2 = _stage(256, 512, block_units[1], 2)
        self.stage3 = _stage(512, 1024, block_units[2], 2) if with_unused_stage else None

    @staticmethod
    def _pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
        return F.pad(x, (0, dw, 0, dh)) if dh > 0 or dw > 0 else x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        half = self.root(x)
        quarter = self.stage1(F.max_pool2d(half, 3, 2))
        eighth = self.stage2(quarter)  # from the unpadded map, as TransUNet and the reference: only the skips are padded
        return [self._pad_to(eighth, (h // 8, w // 8)), self._pad_to(quarter, (h // 4, w // 4)), half]
