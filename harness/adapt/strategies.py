"""The adaptation strategies as one module each can be trained end to end: PFM + adapter + decoder.

=====================  ==========================  ====================================
strategy               trainable                   backbone
=====================  ==========================  ====================================
frozen                 decoder                     frozen (features may come served)
lora, dora             attention adapters+decoder  frozen weights, adapters inside
cnn_adapter            ResNetV2 beside + decoder   frozen, run without gradients
transformer_adapter    2 ViT blocks + decoder      frozen, run without gradients
full                   everything                  trained
=====================  ==========================  ====================================

:func:`build_segmenter` is used by the training job (``pfmbench train``) and by the tests
that count trainable parameters on the meta device.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.adapt import lora
from harness.adapt.cnn_adapter import SKIP_CHANNELS, CNNAdapter
from harness.adapt.decoders import TransUNetDecoder, build_decoder
from harness.adapt.transformer_adapter import TransformerAdapter
from harness.config import FROZEN_BACKBONE, IN_JOB, STRATEGIES, DecoderName, Strategy
from harness.models.builders.base import TokenExtractor

__all__ = ["FROZEN_BACKBONE", "IN_JOB", "STRATEGIES", "Segmenter", "Strategy", "build_segmenter", "trainable_parameters", "trainable_state"]


class Segmenter(nn.Module):
    """Image batch (normalised ``[B, 3, H, W]``) -> logits ``[B, C, H, W]``, for one strategy."""

    def __init__(self, extractor: TokenExtractor, strategy: str, decoder: nn.Module, blocks: tuple[int, ...],
                 cnn: CNNAdapter | None = None, adapter: TransformerAdapter | None = None) -> None:
        super().__init__()
        self.extractor, self.strategy, self.decoder, self.blocks = extractor, strategy, decoder, blocks
        self.cnn, self.adapter = cnn, adapter
        self.backbone_frozen = strategy in FROZEN_BACKBONE
        self.adapted_modules = 0  # backbone linears with a LoRA/DoRA adapter (set by build_segmenter)

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.backbone_frozen:
            self.extractor.eval()  # frozen means frozen: no dropout, no norm statistics updates
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            grids, prefixes = self.extractor.features(x, self.blocks)
        if self.adapter is not None:
            grids = [self.adapter(grids[0], prefixes[0])]
        tokens = torch.stack(grids, dim=1)
        if self.cnn is not None:
            return self.decoder(tokens, self.cnn(x))
        return self.decoder(tokens)


def build_segmenter(extractor: TokenExtractor, strategy: str, decoder: DecoderName, num_classes: int, blocks: tuple[int, ...],
                    impl: lora.Impl = "densebench", rank: int = 16, alpha: float = 1.0, cnn_unused_stage: bool = True,
                    align_corners: bool = False) -> Segmenter:
    """Wrap ``extractor`` for ``strategy``; afterwards exactly the trainable parameters have ``requires_grad``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    spec = extractor.spec
    if strategy in ("cnn_adapter", "transformer_adapter") and len(blocks) != 1:
        raise ValueError(f"{strategy} reads one block (the reference: the last); got blocks {list(blocks)}")
    extractor.requires_grad_(strategy == "full")
    adapted: list[str] = []
    if strategy in ("lora", "dora") and lora.reference_adapts(spec.name, impl):
        adapted = lora.inject(extractor.backbone, strategy, rank, alpha, impl)  # type: ignore[arg-type]
    cnn = adapter = None
    if strategy == "cnn_adapter":
        if decoder != "transunet":
            raise ValueError("cnn_adapter feeds skips to the transunet decoder; use --decoder transunet")
        cnn = CNNAdapter(with_unused_stage=cnn_unused_stage)
        head: nn.Module = TransUNetDecoder(spec.embed_dim, num_classes, spec.patch_size, skip_channels=SKIP_CHANNELS, align_corners=align_corners)
    else:
        head = build_decoder(decoder, spec.embed_dim, len(blocks), num_classes, spec.patch_size, align_corners)
    if strategy == "transformer_adapter":
        adapter = TransformerAdapter(spec.embed_dim)
    model = Segmenter(extractor, strategy, head, blocks, cnn, adapter)
    model.adapted_modules = len(adapted)
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold: trainable parameters and every buffer outside a frozen backbone."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = isinstance(model, Segmenter) and model.strategy != "full"
    names |= {n for n, _ in model.named_buffers() if not (frozen and n.startswith("extractor."))}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}
