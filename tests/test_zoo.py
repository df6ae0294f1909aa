"""The model zoo: every Dockerfile builds the architecture it describes and serves the tokens it promises.

Per model, with random init: token-grid shapes on the meta device at 224, 448 and a
non-square size (nothing allocated, so the giants run too); a real CPU forward for every
model up to ViT-L size and for one ViT-g, checked against the library's own forward.
Checkpoint key mapping is tested on each released layout the specs name.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import PackageError
from harness.models.builders import build_backbone, build_extractor, check_packages, family
from harness.models.spec import ModelSpec, get_spec, list_models
from harness.models.weights import ResolvedWeights, apply_key_map, licence_notice, load_into

MODELS = list_models()
#: Real CPU forward for everything up to ViT-L size (MUSK's vision path is a ViT-L) ...
UP_TO_VIT_L = [m for m in MODELS if get_spec(m).params_m < 400 or m == "musk"]
#: ... and for one ViT-g at 224 px, batch 1.
GIANT = "h_optimus_0"


def test_the_zoo_has_the_reference_models_and_the_newest():
    assert len(MODELS) >= 22
    densebench = {get_spec(m).densebench_name for m in MODELS} - {None}
    assert len(densebench) == 17
    assert {"uni2_h", "virchow2", "h_optimus_1", "h0_mini", "gpfm"} <= set(MODELS)
    assert {get_spec(m).builder for m in MODELS} == {"timm", "transformers", "open_clip", "custom"}
    assert get_spec(GIANT).params_m > 1000


def _meta_extractor(spec: ModelSpec):
    with torch.device("meta"):
        return family(spec).extractor(spec, build_backbone(spec))


@pytest.mark.parametrize("name", MODELS)
def test_token_grids_at_224_448_and_non_square(name):
    spec = get_spec(name)
    p = spec.patch_size
    sizes = [(224 // p * p, 224 // p * p), (448 // p * p, 448 // p * p), (10 * p, 14 * p)]
    ext = _meta_extractor(spec)
    for h, w in sizes:
        with torch.device("meta"):
            tokens, cls = ext(torch.empty(2, 3, h, w))
        assert tuple(tokens.shape) == (2, 1, h // p, w // p, spec.embed_dim), (name, h, w)
        assert tuple(cls.shape) == (2, 1, spec.embed_dim)


def _reference_sequence(ext, x: torch.Tensor) -> torch.Tensor:
    """The library's own forward: the final normed token sequence [B, prefix + h*w, D]."""
    spec, b = ext.spec, ext.backbone
    if spec.builder == "transformers":
        return b(pixel_values=x).last_hidden_state
    if spec.builder == "open_clip":
        return b.trunk.forward_features(x)
    if spec.constructor == "musk_large_patch16_384":
        return b(x)
    out = b.forward_features(x)
    return out.flatten(1, 2) if out.ndim == 4 else out  # Swin: [B, h, w, D]


@pytest.mark.slow
@pytest.mark.parametrize("name", UP_TO_VIT_L + [GIANT])
def test_real_forward_matches_the_library(name):
    spec = get_spec(name)
    size = spec.native_input if name != GIANT else 224
    ext = build_extractor(spec)
    images = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    x = ext.preprocess(torch.from_numpy(images))
    with torch.inference_mode():
        tokens, cls = ext(x)
        ref = _reference_sequence(ext, x)
    h = size // spec.patch_size
    assert tokens.shape == (1, 1, h, h, spec.embed_dim)
    assert torch.isfinite(tokens).all()
    assert ref.shape[1] == spec.prefix_tokens + h * h, "prefix-tokens label disagrees with the model"
    torch.testing.assert_close(tokens[0, 0].reshape(h * h, -1), ref[0, spec.prefix_tokens:], atol=2e-4, rtol=1e-4)
    if spec.prefix_tokens:
        torch.testing.assert_close(cls[0, 0], ref[0, 0], atol=2e-4, rtol=1e-4)
    assert tokens.std() > 0.1  # normed tokens, not zeros


def test_intermediate_blocks_differ_and_come_in_the_asked_order():
    ext = build_extractor(get_spec("lunit_vits8"))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        both, _ = ext(x, (2, -1))
        last, _ = ext(x, (-1,))
        early, _ = ext(x, (2,))
    torch.testing.assert_close(both[:, 1], last[:, 0])
    torch.testing.assert_close(both[:, 0], early[:, 0])
    assert not torch.allclose(both[:, 0], both[:, 1])


def test_swin_taps_only_its_last_stage():
    ext = _meta_extractor(get_spec("ctranspath"))
    with pytest.raises(ValueError, match="can only tap its last stage"):
        with torch.device("meta"):
            ext(torch.empty(1, 3, 224, 224), (1,))


# --- checkpoint layouts -------------------------------------------------------------


def _meta_keys(name: str) -> set[str]:
    with torch.device("meta"):
        return set(build_backbone(get_spec(name)).state_dict())


def test_gpfm_reads_the_dinov2_training_dict():
    keys = _meta_keys("gpfm")
    released = {"dino_head.mlp.0.weight", "ibot_head.last_layer.weight", "backbone.mask_token"}
    for k in keys:  # DINOv2 chunks its 24 blocks in 4 groups: blocks.<chunk>.<i>.
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // 6}.{i}." + k.split(".", 2)[2]
        released.add("backbone." + k)
    mapped = apply_key_map(dict.fromkeys(released), get_spec("gpfm").key_map)
    assert set(mapped) == keys


def test_conch_v1_5_keeps_the_trunk_of_the_vision_tower():
    keys = _meta_keys("conch_v1_5")
    released = {f"trunk.{k}" for k in keys} | {"attn_pool_contrast.attn.in_proj_weight", "ln_contrast.weight"}
    assert set(apply_key_map(dict.fromkeys(released), get_spec("conch_v1_5").key_map)) == keys


def test_conch_loads_the_trunk_out_of_a_full_coca_checkpoint(tmp_path):
    spec = get_spec("conch")
    ext = build_extractor(spec, ResolvedWeights.random(3))
    state = {f"visual.trunk.{k}": v for k, v in ext.backbone.trunk.state_dict().items()}
    state |= {"visual.attn_pool_contrast.query": torch.zeros(1, 768), "text.token_embedding.weight": torch.zeros(4, 768), "logit_scale": torch.ones(())}
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": state}, path)
    loaded = build_extractor(spec, ResolvedWeights(kind="dir", path=path, sha256="x"))
    key = "trunk.blocks.11.mlp.fc2.weight"
    assert torch.equal(loaded.backbone.state_dict()[key], ext.backbone.state_dict()[key])


def test_ctranspath_loads_the_original_timm_0_5_layout(tmp_path):
    spec = get_spec("ctranspath")
    ref = build_backbone(spec, init_seed=5)
    state = {}
    for k, v in ref.state_dict().items():  # timm 0.5: downsample at the end of the previous stage
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        state[k] = v
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    path = tmp_path / "ctranspath.pth"
    torch.save({"model": state}, path)
    model = build_backbone(spec, init_seed=6)
    load_into(model, path, spec, rename=lambda s: family(spec).rename(model, s))
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


# --- packages and licences ------------------------------------------------------------


def test_a_pinned_package_at_another_version_is_a_one_line_error():
    spec = get_spec("musk").model_copy(update={"packages": {"torchscale": "9.9.9"}})
    with pytest.raises(PackageError) as exc:
        check_packages(spec)
    line = exc.value.one_line()
    assert "pins torchscale==9.9.9, but torchscale 0.3.0 is installed" in line and "make setup" in line
    missing = get_spec("musk").model_copy(update={"packages": {"no-such-package": "1.0"}})
    with pytest.raises(PackageError, match="no-such-package is not installed"):
        check_packages(missing)
    check_packages(get_spec("musk"))  # the real pins are installed


def test_licence_is_shown_once_and_only_for_real_weights(tmp_path):
    spec = get_spec("uni")
    assert licence_notice(spec, ResolvedWeights.random()) is None
    real = ResolvedWeights(kind="dir", path=tmp_path / "w.bin", sha256="x")
    first = licence_notice(spec, real)
    assert first is not None and "CC-BY-NC-ND-4.0" in first and "gated" in first
    assert licence_notice(spec, real) is None
