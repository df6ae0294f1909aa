"""MUSK: a BEiT-3 multiway transformer (vision expert "A", language expert "B").

MUSK's own repository vendors torchscale's BEiT-3 and adds a thin wrapper
(``musk_large_patch16_384``). Here the network is PyPI ``torchscale`` (pinned in the
Dockerfile) with the same configuration and the same wrapper parameters
(``vision_head``, ``language_head``, ``logit_scale``), so MUSK checkpoints load with
their own key names and the parameter count is MUSK's (675 M, text parts included).

The extractor runs the vision path block by block rather than through
``BEiT3.forward``, for two reasons: torchscale's vision embedding rejects any input but
the native 384 px (the position table here is interpolated instead, as for the ViTs),
and a forward hook per block is how intermediate blocks are tapped.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.models.builders.base import TokenExtractor, tokens_to_grid
from harness.models.spec import ModelSpec

#: Fairseq convention kept by BEiT-3: position indices start at 2.
_POS_OFFSET = 2


class Musk(nn.Module):
    """MUSK's wrapper around BEiT-3: the parameters of ``musk.modeling.MUSK``."""

    def __init__(self, img_size: int = 384, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, vocab_size: int = 64010) -> None:
        super().__init__()
        with warnings.catch_warnings():  # torchscale imports timm.models.layers (deprecated alias)
            warnings.simplefilter("ignore", FutureWarning)
            from torchscale.architecture.config import EncoderConfig
            from torchscale.model.BEiT3 import BEiT3

        args = EncoderConfig(
            img_size=img_size, patch_size=patch_size, vocab_size=vocab_size, multiway=True,
            layernorm_embedding=False, normalize_output=True, no_output_layer=True, drop_path_rate=0.0,
            encoder_embed_dim=embed_dim, encoder_attention_heads=num_heads,
            encoder_ffn_embed_dim=int(embed_dim * mlp_ratio), encoder_layers=depth, checkpoint_activations=None,
        )
        self.beit3 = BEiT3(args)
        self.language_head = nn.Linear(embed_dim, embed_dim, bias=False)
        self.vision_head = nn.Linear(embed_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.apply(_init_weights)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The reference vision path at the native size: the final normed tokens."""
        return self.beit3(visual_tokens=image)["encoder_out"]


def _init_weights(m: nn.Module) -> None:
    """MUSK's init: truncated normal within one std (timm's inverse-CDF sampler, as MUSK uses;
    torch's rejection sampler takes a minute for 675 M parameters at that bound)."""
    from timm.layers import trunc_normal_

    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02, a=-0.02, b=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build(spec: ModelSpec) -> nn.Module:
    return Musk(**spec.kwargs)


class MuskExtractor(TokenExtractor):
    """Vision-expert tokens of chosen blocks, each through the encoder's final (vision) norm."""

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        beit3 = self.backbone.beit3
        enc = beit3.encoder
        patches = beit3.vision_embed.proj(x)  # [B, D, h, w]
        b, d, h, w = patches.shape
        tokens = torch.cat([beit3.vision_embed.cls_token.expand(b, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        table = enc.embed_positions.A.weight[_POS_OFFSET:]  # [1 + n*n, D]
        n = math.isqrt(table.shape[0] - 1)
        grid_pos = table[1:].reshape(1, n, n, d).permute(0, 3, 1, 2)
        if (h, w) != (n, n):
            grid_pos = F.interpolate(grid_pos.float(), size=(h, w), mode="bicubic", align_corners=False).to(table.dtype)
        pos = torch.cat([table[:1], grid_pos.permute(0, 2, 3, 1).reshape(h * w, d)], dim=0)
        out = enc.embed_scale * tokens + pos
        if enc.layernorm_embedding is not None:
            out = enc.layernorm_embedding(out)
        return out

    def _tokens(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        from torchscale.component.multiway_network import set_split_position

        enc = self.backbone.beit3.encoder
        enc.apply(set_split_position(-1))  # every token goes through the vision expert
        h, w = self.spec.grid(*x.shape[-2:])
        seq = self._embed(x)
        grids, cls = [], []
        for i, layer in enumerate(enc.layers[: max(blocks) + 1]):
            seq, _ = layer(seq, encoder_padding_mask=None, multiway_split_position=-1)
            if i in blocks:
                g, c = tokens_to_grid(enc.layer_norm(seq), self.spec.prefix_tokens, h, w)
                grids.append(g)
                cls.append(c)
        order = sorted(blocks)
        return [grids[order.index(b)] for b in blocks], [cls[order.index(b)] for b in blocks]
