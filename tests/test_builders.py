"""Token extractors: grid shapes, prefix removal, the final-norm convention, seeded random init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.models.builders import build_extractor
from harness.models.spec import get_spec
from harness.models.weights import ResolvedWeights


@pytest.fixture(scope="module")
def phikon():
    return build_extractor(get_spec("phikon"))


@pytest.fixture(scope="module")
def uni():
    return build_extractor(get_spec("uni"))


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(224, 224), (448, 448), (160, 224)])
def test_grid_shapes(phikon, size):
    tokens, cls = phikon.extract(_images(1, *size), (3, -1))
    assert tokens.shape == (1, 2, size[0] // 16, size[1] // 16, 768)
    assert cls.shape == (1, 2, 768)
    assert tokens.dtype == np.float16


def test_last_block_is_the_final_normed_sequence_transformers(phikon):
    imgs = _images(2, 224, 224)
    x = phikon.preprocess(torch.from_numpy(imgs))
    with torch.inference_mode():
        tokens, cls = phikon(x, (-1,))
        ref = phikon.backbone(pixel_values=x).last_hidden_state
    assert torch.allclose(tokens[:, 0].reshape(2, 196, 768), ref[:, 1:], atol=1e-5)
    assert torch.allclose(cls[:, 0], ref[:, 0], atol=1e-5)


def test_last_block_is_forward_features_timm(uni):
    imgs = _images(1, 224, 224)
    x = uni.preprocess(torch.from_numpy(imgs))
    with torch.inference_mode():
        tokens, cls = uni(x, (-1,))
        ref = uni.backbone.forward_features(x)
    assert tokens.shape == (1, 1, 14, 14, 1024)
    assert torch.allclose(tokens[:, 0].reshape(1, 196, 1024), ref[:, 1:], atol=1e-4)
    assert torch.allclose(cls[:, 0], ref[:, 0], atol=1e-4)


def test_preprocess_uses_the_spec_normalisation(phikon):
    img = np.full((1, 16, 16, 3), 255, np.uint8)
    x = phikon.preprocess(torch.from_numpy(img))
    spec = phikon.spec
    expected = [(1 - m) / s for m, s in zip(spec.mean, spec.std)]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected), atol=1e-6)


def test_random_init_is_seeded():
    spec = get_spec("phikon")
    a = build_extractor(spec, ResolvedWeights.random(0)).state_dict()
    b = build_extractor(spec, ResolvedWeights.random(0)).state_dict()
    c = build_extractor(spec, ResolvedWeights.random(1)).state_dict()
    key = "backbone.layers.0.attention.q_proj.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])


def test_rejects_sizes_that_are_not_patch_multiples(phikon):
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        phikon.extract(_images(1, 200, 224))


@pytest.mark.parametrize("name", ["phikon", "hibou_b"])  # transformers ViT (.layers) and DINOv2 with registers (.encoder.layer)
def test_a_shallow_tap_runs_only_the_blocks_it_needs_and_equals_the_full_forward(name):
    from harness.models.builders import transformers_vit

    spec = get_spec(name)
    ext = build_extractor(spec, ResolvedWeights.random())
    images = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    full, _ = ext.extract(images, (2, spec.depth - 1))
    owner, attr = transformers_vit._block_list(ext.backbone)
    ran = []
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, blk in enumerate(getattr(owner, attr))]
    shallow, _ = ext.extract(images, (2,))
    for h in hooks:
        h.remove()
    assert ran == [0, 1, 2]
    np.testing.assert_array_equal(shallow[:, 0], full[:, 0])
    assert len(getattr(owner, attr)) == spec.depth  # the block list is whole again
