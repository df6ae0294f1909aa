"""Every models/*/Dockerfile parses into a spec that describes the architecture that gets built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.errors import SpecError, UnknownModelError
from harness.models.builders import build_backbone
from harness.models.spec import get_spec, is_model, list_models, parse_dockerfile, resolve_blocks

MODELS = list_models()


def test_registry_finds_the_models():
    assert {"phikon", "uni"} <= set(MODELS)
    assert "_base" not in MODELS
    assert is_model("phikon") and not is_model("nosuch")
    assert list_models("phikon*") == ["phikon", "phikon_v2"]


@pytest.mark.parametrize("name", MODELS)
def test_labels_describe_the_built_architecture(name):
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_backbone(spec)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert params_m == pytest.approx(spec.params_m, rel=0.01), f"{name}: built {params_m:.2f}M, spec says {spec.params_m}M"
    dims = {p.shape[-1] for n, p in model.named_parameters() if "norm" in n and n.endswith(".weight")}
    assert spec.embed_dim in dims
    assert spec.spec_hash() == get_spec(name).spec_hash()


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownModelError) as exc:
        get_spec("phikn")
    line = exc.value.one_line()
    assert "phikon" in line and "uni" in line and "did you mean 'phikon'" in line
    assert "\n" not in line


def _write(tmp_path: Path, name: str, labels: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "Dockerfile").write_text(f"FROM scratch\nLABEL {labels}\n")
    return d / "Dockerfile"


def test_malformed_labels_name_the_problem(tmp_path):
    good = (Path(__file__).parents[1] / "models/phikon/Dockerfile").read_text()
    d = tmp_path / "phikon"
    d.mkdir()
    (d / "Dockerfile").write_text(good.replace("org.pfmbench.mean='[0.485, 0.456, 0.406]'", "org.pfmbench.mean='[0.485, 0.456'"))
    with pytest.raises(SpecError, match="org.pfmbench.mean is not valid JSON"):
        parse_dockerfile(d / "Dockerfile")
    (d / "Dockerfile").write_text(good.replace('org.pfmbench.patch-size="16"', 'org.pfmbench.patch-size="zero"'))
    with pytest.raises(SpecError, match="patch_size"):
        parse_dockerfile(d / "Dockerfile")
    with pytest.raises(SpecError, match="must equal the folder name"):
        parse_dockerfile(_write(tmp_path, "other", 'org.pfmbench.name="phikon"'))
    with pytest.raises(SpecError, match="no org.pfmbench"):
        parse_dockerfile(_write(tmp_path, "empty", 'foo="bar"'))


def test_block_indices():
    assert resolve_blocks((-1,), 12) == (11,)
    assert resolve_blocks((3, -4, -1), 12) == (3, 8, 11)
    with pytest.raises(ValueError, match="out of range for depth 12; use -12..11"):
        resolve_blocks((12,), 12)
    with pytest.raises(ValueError, match="same block twice"):
        resolve_blocks((11, -1), 12)
