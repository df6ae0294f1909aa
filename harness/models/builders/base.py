"""The one feature interface every backbone family is adapted to.

A :class:`TokenExtractor` takes a normalised image batch ``[B, 3, H, W]`` and a tuple
of 0-based block indices and returns the patch-token grids of those blocks,
``[B, L, H/p, W/p, D]``, plus their class tokens ``[B, L, D]``. Prefix tokens (CLS and
registers) are removed from the grids; :meth:`TokenExtractor.features` returns them too
(the Transformer adapter reads every output token, as the reference does). Every tapped block goes through the model's
final norm, so the last block equals the reference decoder's input (the final normed
token sequence, ``forward_features``) and earlier blocks are on the same scale.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.errors import TokenCountError
from harness.models.spec import ModelSpec, resolve_blocks


class TokenExtractor(nn.Module, abc.ABC):
    """Wraps a backbone; subclasses implement :meth:`_tokens` for their library."""

    #: The library's own module (timm, transformers, open_clip, torchscale): its feature methods differ per library.
    backbone: Any
    mean: torch.Tensor
    std: torch.Tensor
    #: The autocast dtype of :meth:`extract` on a GPU (``build_engine(dtype=...)``); unused on a CPU (fp32).
    autocast_dtype: torch.dtype = torch.bfloat16

    def __init__(self, spec: ModelSpec, backbone: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]`` (mean/std from the spec)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor, blocks: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        grids, prefixes = self.features(x, blocks)
        cls = [p[:, 0] if p.shape[1] else g.mean(dim=(1, 2)) for g, p in zip(grids, prefixes)]  # no prefix (Swin): mean token
        return torch.stack(grids, dim=1), torch.stack(cls, dim=1)

    def features(self, x: torch.Tensor, blocks: tuple[int, ...] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per tapped block: the ``[B, h, w, D]`` patch grid and the ``[B, P, D]`` prefix tokens (P may be 0)."""
        spec = self.spec
        idx = resolve_blocks(blocks or spec.blocks, spec.depth)
        h, w = x.shape[-2:]
        if h % spec.patch_size or w % spec.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {spec.patch_size}")
        return self._tokens(x, idx)

    @torch.inference_mode()
    def extract(self, images: np.ndarray, blocks: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 numpy in, fp16 numpy out: the server and the in-process runtime both call this.

        On a GPU the forward runs under :attr:`autocast_dtype` autocast (bf16 unless set); on CPU in float32.
        """
        device = self.mean.device
        x = self.preprocess(torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=device.type == "cuda"):
            tokens, cls = self(x, blocks)
        return tokens.to(torch.float16).cpu().numpy(), cls.to(torch.float16).cpu().numpy()

    @abc.abstractmethod
    def _tokens(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per requested block: a ``[B, h, w, D]`` grid and the ``[B, P, D]`` prefix tokens (CLS first)."""


def tokens_to_grid(seq: torch.Tensor, prefix: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a normed token sequence ``[B, prefix + h*w, D]`` into grid and prefix tokens."""
    b, n, d = seq.shape
    if n != prefix + h * w:
        raise TokenCountError(n, prefix, h, w)
    return seq[:, prefix:].reshape(b, h, w, d), seq[:, :prefix]
