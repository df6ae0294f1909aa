"""The Transformer adapter: two trainable ViT blocks on every output token of the frozen PFM.

As the protocol describes the reference's ``models/transformer_adapter.py``: all tokens,
CLS and registers included, go through ``depth`` pre-norm blocks (width of the PFM,
``dim / 64`` heads, MLP ratio 4, GELU, qkv bias, LayerScale 1e-5, stochastic depth rising
linearly to 0.1), a final LayerNorm, and then the prefix tokens are dropped and the patch
tokens go to the decoder as a grid. Weights: truncated normal (std 0.02), LayerNorm 1/0.
"""

from __future__ import annotations

import torch
from torch import nn


class TransformerAdapter(nn.Module):
    def __init__(self, dim: int, depth: int = 2, drop_path: float = 0.1) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.Sequential(*(Block(dim, num_heads=max(1, dim // 64), mlp_ratio=4.0, qkv_bias=True, init_values=1e-5, drop_path=r) for r in rates))
        self.norm = nn.LayerNorm(dim)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, grid: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """``grid`` ``[B, h, w, D]`` and ``prefix`` ``[B, P, D]`` -> adapted grid ``[B, h, w, D]``."""
        b, h, w, d = grid.shape
        seq = torch.cat([prefix, grid.reshape(b, h * w, d)], dim=1)
        seq = self.norm(self.blocks(seq))
        return seq[:, prefix.shape[1]:].reshape(b, h, w, d)
