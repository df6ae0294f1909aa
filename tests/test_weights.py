"""Weights from a local directory, from a hub cache, and the errors when they cannot be had."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.errors import GatedWeightsError, HubUnavailableError, WeightsError
from harness.models.builders import build_backbone, build_extractor
from harness.models.spec import get_spec
from harness.models.weights import resolve_weights
from harness.util.hashing import sha256_file


@pytest.fixture(scope="module")
def phikon_state():
    """A state dict with values that differ from the seed-0 random init."""
    return {k: v.clone() for k, v in build_backbone(get_spec("phikon"), init_seed=123).state_dict().items()}


def _key(state):
    return "layers.5.mlp.fc2.weight"


def test_legacy_transformers_key_names_are_mapped(tmp_path, phikon_state):
    """Published Phikon checkpoints use the names of transformers 4 (encoder.layer.N.attention.attention.query)."""
    legacy = {}
    for k, v in phikon_state.items():
        k = k.replace("layers.", "encoder.layer.").replace("attention.q_proj", "attention.attention.query")
        k = k.replace("attention.k_proj", "attention.attention.key").replace("attention.v_proj", "attention.attention.value")
        k = k.replace("attention.o_proj", "attention.output.dense").replace("mlp.fc1", "intermediate.dense").replace("mlp.fc2", "output.dense")
        legacy[k] = v
    assert "encoder.layer.0.attention.attention.query.weight" in legacy
    save_file(legacy, tmp_path / "model.safetensors")
    spec = get_spec("phikon")
    loaded = build_extractor(spec, resolve_weights(spec, str(tmp_path))).backbone.state_dict()
    for k, v in phikon_state.items():
        assert torch.equal(loaded[k], v), k


def test_loads_safetensors_from_a_directory(tmp_path, phikon_state):
    save_file(phikon_state, tmp_path / "model.safetensors")
    spec = get_spec("phikon")
    w = resolve_weights(spec, str(tmp_path))
    assert w.kind == "dir" and w.sha256 == sha256_file(tmp_path / "model.safetensors")
    assert w.label == f"sha256:{w.sha256}"
    loaded = build_extractor(spec, w).backbone.state_dict()
    assert torch.equal(loaded[_key(phikon_state)], phikon_state[_key(phikon_state)])


def test_loads_a_wrapped_torch_checkpoint(tmp_path, phikon_state):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in phikon_state.items()}}
    torch.save(wrapped, tmp_path / "checkpoint.pth")
    spec = get_spec("phikon")
    loaded = build_extractor(spec, resolve_weights(spec, str(tmp_path / "checkpoint.pth"))).backbone.state_dict()
    assert torch.equal(loaded[_key(phikon_state)], phikon_state[_key(phikon_state)])


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    spec = get_spec("phikon")
    with pytest.raises(WeightsError, match="does not fit 'phikon'"):
        build_extractor(spec, resolve_weights(spec, str(tmp_path)))


def test_missing_path_and_sha_mismatch(tmp_path, phikon_state):
    spec = get_spec("phikon")
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(spec, str(tmp_path / "nope"))
    save_file(phikon_state, tmp_path / "model.safetensors")
    pinned = spec.model_copy(update={"weights_sha256": "0" * 64})
    with pytest.raises(WeightsError, match="expects 000000000000"):
        resolve_weights(pinned, str(tmp_path))


def test_offline_hub_names_the_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError) as exc:
        resolve_weights(get_spec("phikon"), "hub")
    line = exc.value.one_line()
    assert "WEIGHTS=random" in line and "WEIGHTS=<dir>" in line and "\n" not in line


def test_an_unreachable_hub_fails_at_once_naming_the_host(monkeypatch):
    """No network (here: a hub endpoint on a closed local port): one line naming the host, from the probe before any download."""
    import huggingface_hub.constants as c

    from conftest import free_port

    port = free_port()
    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{port}")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with pytest.raises(HubUnavailableError) as exc:
        resolve_weights(get_spec("phikon"), "hub")
    line = exc.value.one_line()
    assert f"127.0.0.1:{port} unreachable" in line and "Connection refused" in line and "\n" not in line


def test_gated_model_without_token():
    with pytest.raises(GatedWeightsError, match="no hub token is set") as exc:
        resolve_weights(get_spec("uni"), "hub")
    assert "export HF_TOKEN" in exc.value.fix


def test_hub_cache_layout_is_used_offline(tmp_path, monkeypatch, phikon_state):
    """A snapshot laid out as huggingface_hub caches it resolves without any network."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    repo = cache / "models--owkin--phikon"
    commit = "a" * 40
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file(phikon_state, snap / "model.safetensors")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    w = resolve_weights(get_spec("phikon"), "hub")
    assert w.kind == "hub" and Path(w.path) == snap / "model.safetensors"
    assert w.sha256 == sha256_file(snap / "model.safetensors")
