"""``pfmbench models check NAME``: a new model's labels held against the architecture they build.

A wrong ``embed-dim`` or a forgotten ``reg-tokens`` passes ``models show`` (the labels are
well-formed) and used to fail much later, as a bare assertion in the server or a shape
error in a decoder. Here the model is built twice, cheaply: on the meta device, to count
its parameters (nothing allocated, so a ViT-g takes seconds), and for real with random
weights, for one forward of two images at a small non-square size (``2p x 3p`` pixels
for patch ``p``). What it measures is compared with each label, and a mismatch names the
LABEL to change and the value to put there.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import nn

from harness.models.builders import build_backbone, build_extractor
from harness.errors import TokenCountError
from harness.models.spec import ModelSpec, get_spec, label_key

#: Where each library keeps a ViT's blocks (the first that exists is counted); a Swin's stages.
_BLOCK_LISTS = ("blocks", "trunk.blocks", "encoder.layer", "encoder.layers", "beit3.encoder.layers", "transformer.resblocks", "layers", "stages")
#: How far the counted parameters may be from ``params-m``: published counts are rounded.
PARAMS_TOLERANCE = 0.01


@dataclass(frozen=True)
class LabelCheck:
    """One label against what the built model shows."""

    label: str
    declared: str
    measured: str
    ok: bool | None  # None: not measurable for this architecture (said, not failed)


def _block_count(backbone: nn.Module) -> int | None:
    for path in _BLOCK_LISTS:
        try:
            found = operator.attrgetter(path)(backbone)
        except AttributeError:
            continue
        if isinstance(found, (nn.ModuleList, nn.Sequential)):
            return len(found)
    return None


def _register_count(backbone: nn.Module) -> int | None:
    """Register tokens as the library states them (timm: ``num_reg_tokens``; transformers: ``config.num_register_tokens``)."""
    for owner in (backbone, getattr(backbone, "trunk", None)):
        found = getattr(owner, "num_reg_tokens", None)
        if isinstance(found, int):
            return found
    stated = getattr(getattr(backbone, "config", None), "num_register_tokens", None)
    return stated if isinstance(stated, int) else None


def _params(spec: ModelSpec) -> LabelCheck:
    with torch.device("meta"):
        backbone = build_backbone(spec)
    millions = sum(p.numel() for p in backbone.parameters()) / 1e6
    ok = abs(millions - spec.params_m) <= PARAMS_TOLERANCE * spec.params_m
    return LabelCheck(label_key("params_m"), f"{spec.params_m:g}", f"{millions:.2f}" + ("" if ok else f" (put {millions:.2f})"), ok)


def check_model(name: str) -> list[LabelCheck]:
    """Every label ``models check`` can measure for model ``name``, in the order the guide lists them."""
    spec = get_spec(name)  # label problems (all of them, by LABEL key) stop here as one SpecError
    checks = [_params(spec)]
    extractor = build_extractor(spec)
    backbone = extractor.backbone
    p = spec.patch_size
    h, w = 2 * p, 3 * p
    images = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    depth = _block_count(backbone)
    checks.append(LabelCheck(label_key("depth"), str(spec.depth), "not found" if depth is None else str(depth), None if depth is None else depth == spec.depth))
    taps = (spec.depth - 1,)  # the last block: every family taps it (a Swin taps nothing else)
    try:
        with torch.inference_mode():
            grids, prefixes = extractor.features(extractor.preprocess(images), taps)
    except TokenCountError as exc:  # the sequence says how many prefix tokens there really are
        real = exc.found - exc.h * exc.w
        checks.append(LabelCheck(label_key("prefix_tokens"), str(spec.prefix_tokens), f"{real} (put {real})", False))
        return checks + [_registers(spec, backbone)]
    grid = tuple(grids[0].shape[1:3])
    width = int(grids[0].shape[-1])
    checks.append(LabelCheck(label_key("embed_dim"), str(spec.embed_dim), str(width) + ("" if width == spec.embed_dim else f" (put {width})"),
                             width == spec.embed_dim))
    checks.append(LabelCheck(label_key("patch_size"), str(p), f"a {h}x{w} input gave a {grid[0]}x{grid[1]} grid", grid == spec.grid(h, w)))
    prefix = int(prefixes[0].shape[1])
    checks.append(LabelCheck(label_key("prefix_tokens"), str(spec.prefix_tokens), str(prefix) + ("" if prefix == spec.prefix_tokens else f" (put {prefix})"),
                             prefix == spec.prefix_tokens))
    return checks + [_registers(spec, backbone)]


def _registers(spec: ModelSpec, backbone: nn.Module) -> LabelCheck:
    regs = _register_count(backbone)
    if regs is None:
        return LabelCheck(label_key("reg_tokens"), str(spec.reg_tokens), "not stated by the library", None)
    return LabelCheck(label_key("reg_tokens"), str(spec.reg_tokens), str(regs) + ("" if regs == spec.reg_tokens else f" (put {regs})"), regs == spec.reg_tokens)
