"""Low-rank adapters on the attention of every transformer block, for every architecture in the zoo.

Where the adapters go is one regular expression over module names, :data:`ATTENTION_LINEAR`:
fused ``attn.qkv`` + ``attn.proj`` (timm, open_clip, Swin), ``attention.{q,k,v,o}_proj``
(transformers 5 ViT / DINOv2) and the vision expert ``self_attn.{q,k,v,out}_proj.A`` of
BEiT-3 (MUSK; its text expert ``.B`` never sees an image token). The reference matched
module *classes* instead and so missed six models (protocol.md, bug 1); a test checks that
every block of every model gets its adapters.

Two implementations, chosen by the preset:

* ``densebench`` re-implements the reference's own modules, quirks kept so its rows can be
  reproduced: ``y = W x + b + (x A B) * alpha`` (the scale is alpha, not alpha / r), ``A``
  stored ``[in, r]`` and kaiming-initialised on that shape, and DoRA with **one scalar
  magnitude** per linear and whole-matrix Frobenius norms.
* ``corrected`` is standard ``peft`` LoRA / DoRA (scale alpha / r, per-output-column
  magnitude vector), injected with ``peft.inject_adapter_in_model``.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import REFERENCE_UNADAPTED

#: An attention linear layer; the ``block`` group names the transformer block it belongs to.
ATTENTION_LINEAR = re.compile(
    r"^(?P<block>.*\.\d+)\.(?:attn\.(?:qkv|proj)|attention\.[qkvo]_proj|self_attn\.(?:[qkv]|out)_proj\.A)$"
)

Kind = Literal["lora", "dora"]
Impl = Literal["densebench", "peft"]


def attention_targets(backbone: nn.Module) -> list[str]:
    """Names of the linear layers that get adapters, in module order."""
    return [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear) and ATTENTION_LINEAR.match(n)]


def adapted_blocks(names: list[str]) -> list[str]:
    """The distinct transformer blocks (module paths) that ``names`` fall in, in order."""
    seen: dict[str, None] = {}
    for n in names:
        m = ATTENTION_LINEAR.match(n)
        if m:
            seen.setdefault(m.group("block"), None)
    return list(seen)


class ReferenceLoRALinear(nn.Module):
    """The reference's LoRA (``models/lora.py``): ``W x + b + (x A B) * alpha``; with ``dora``,
    its DoRA (``models/dora.py``): ``W' = m * ||W||_F * (W + dW) / ||W + dW||_F``, ``m`` a scalar.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dora: bool = False) -> None:
        super().__init__()
        self.base = base
        self.alpha = alpha
        self.dora = dora
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(base.in_features, rank, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # on the [in, r] shape, as the reference
        self.magnitude = nn.Parameter(torch.ones((), device=dev)) if dora else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dora:
            return self.base(x) + (x @ self.lora_A.to(x.dtype) @ self.lora_B.to(x.dtype)) * self.alpha
        w = self.base.weight
        merged = w + (self.lora_A @ self.lora_B).t() * self.alpha
        w_new = self.magnitude * w.norm() * merged / merged.norm()
        return F.linear(x, w_new.to(x.dtype), None if self.base.bias is None else self.base.bias.to(x.dtype))


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def reference_adapts(model: str, impl: Impl) -> bool:
    """Whether LoRA/DoRA put adapters on ``model``: always with ``peft``; as the reference with ``densebench``."""
    return impl != "densebench" or model not in REFERENCE_UNADAPTED


def inject(backbone: nn.Module, kind: Kind, rank: int, alpha: float, impl: Impl) -> list[str]:
    """Freeze ``backbone`` and put adapters on its attention linears; returns the adapted names.

    Only the adapter parameters (A, B and, for DoRA, the magnitude) are left trainable.
    """
    targets = attention_targets(backbone)
    if not targets:
        raise ValueError(f"no attention linear layers found in {type(backbone).__name__}; extend ATTENTION_LINEAR")
    backbone.requires_grad_(False)
    if impl == "densebench":
        for name in targets:
            _set_module(backbone, name, ReferenceLoRALinear(_linear(backbone, name), rank, alpha, dora=kind == "dora"))
        return targets
    from peft import LoraConfig, inject_adapter_in_model

    # peft annotates lora_alpha as int but scales by alpha / r in float: the corrected preset's 16.0 is what it means
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, use_dora=kind == "dora", bias="none")  # type: ignore[arg-type]
    inject_adapter_in_model(config, backbone)
    return targets


def _linear(backbone: nn.Module, name: str) -> nn.Linear:
    lin = backbone.get_submodule(name)
    assert isinstance(lin, nn.Linear), f"{name} is an attention projection"
    return lin


def expected_adapter_params(backbone: nn.Module, kind: Kind, rank: int, impl: Impl) -> int:
    """Trainable parameters the adapters add to ``backbone`` (before injection): the formula, for tests and docs."""
    total = 0
    for name in attention_targets(backbone):
        lin = _linear(backbone, name)
        total += rank * (lin.in_features + lin.out_features)
        if kind == "dora":
            total += 1 if impl == "densebench" else lin.out_features
    return total
