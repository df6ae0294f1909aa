"""Decoders, Dice loss, the schedules of both presets, and a decoder that actually learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.adapt.decoders import build_decoder
from harness.config import RunConfig
from harness.train.frozen import SplitFeatures, dice_loss, lr_factor, train_frozen


@pytest.mark.parametrize("patch,grid", [(16, 14), (14, 16), (8, 28), (16, 10)])
@pytest.mark.parametrize("name", ["transunet", "linear"])
def test_decoders_output_at_input_resolution(name, patch, grid):
    dec = build_decoder(name, 32, 2, 5, patch).eval()
    out = dec(torch.randn(2, 2, grid, grid + 2, 32))
    assert out.shape == (2, 5, grid * patch, (grid + 2) * patch)


def test_transunet_matches_the_reference_layout():
    dec = build_decoder("transunet", 768, 1, 4, 16)
    convs = [m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (768, 512), (512, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64), (64, 16), (16, 16), (16, 4)]
    assert [b.scale for b in dec.blocks] == [2.0, 2.0, 2.0, 2.0]
    assert build_decoder("transunet", 768, 1, 4, 14).blocks[-1].scale == 1.75


def test_dice_loss():
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    assert dice_loss(perfect, target).item() == pytest.approx(0, abs=1e-4)
    assert dice_loss(-perfect, target).item() > 0.9
    ignored = target.clone()
    ignored[0, :4] = 255  # the reference crashes here; we mask the pixels out
    assert torch.isfinite(dice_loss(perfect, ignored))


def _cfg(**kw) -> RunConfig:
    preset = kw.pop("preset", "densebench")
    return RunConfig.from_preset(preset, model="phikon", dataset="synthetic-tissue", runtime="inprocess", **kw)


def test_densebench_schedule_reproduces_the_reference_quirks():
    cfg = _cfg(epochs=150)
    f = [lr_factor(e, cfg) for e in range(150)]
    # the reference's CosineAnnealingWithWarmup(T_max=100, warmup_epochs=2), stepped once per epoch
    assert f[0] == 0.0 and f[1] == 0.5  # warmup epoch/2 from epoch 0: the first epoch does not learn
    assert f[2] == 1.0  # the cosine starts after the warm-up, at its top
    assert f[51] == pytest.approx(0.5 * (1 + np.cos(np.pi * 49 / 98)))
    assert f[100] == pytest.approx(0.0, abs=1e-12)  # T_max stays 100 while epochs = 150
    assert f[149] == pytest.approx(0.5 * (1 + np.cos(np.pi * 147 / 98)))  # rising again: 0.5 at the last epoch
    assert f[149] == pytest.approx(0.5)


def test_corrected_schedule_warms_up_and_ends_at_zero():
    cfg = _cfg(preset="corrected", epochs=10)
    f = [lr_factor(e, cfg) for e in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0
    assert all(a >= b for a, b in zip(f[1:], f[2:]))
    assert f[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert cfg.select_metric == "mDice"


def test_decoder_learns_separable_features():
    """Tokens that encode the class of their patch: the decoder must reach a high test score."""
    rng = np.random.default_rng(0)

    def make(n):
        # regions of 2x2 patches, so bilinear upsampling only blurs a thin border
        masks = rng.integers(0, 3, (n, 2, 2)).repeat(32, 1).repeat(32, 2).astype(np.uint8)
        tokens = np.eye(3, 16)[masks[:, ::16, ::16]] * 3 + rng.normal(0, 0.3, (n, 4, 4, 16))
        return SplitFeatures(tokens[:, None].astype(np.float16), masks)

    cfg = _cfg(preset="corrected", epochs=30, decoder="linear", lr=1e-2, n_bootstrap=50)
    res = train_frozen(cfg, make(16), make(4), make(4), num_classes=3, patch_size=16)
    assert res.test.metrics["mDice"] > 0.85  # chance is ~0.33; bilinear blur at region borders caps it below 1
    assert 0 <= res.best_epoch < 30
    assert res.history[-1]["loss"] < res.history[0]["loss"]
