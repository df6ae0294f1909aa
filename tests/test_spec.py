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
    with pytest.raises(SpecError, match="org.pfmbench.patch-size: .* \\(got 'zero'\\)"):
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


def test_every_label_problem_is_listed_at_once_by_its_label_key(tmp_path):
    """A misspelt label, JSON that does not parse and a value out of range: one error, three problems, each by its LABEL."""
    good = (Path(__file__).parents[1] / "models/phikon/Dockerfile").read_text()
    d = tmp_path / "phikon"
    d.mkdir()
    bad = (good.replace("org.pfmbench.embed-dim=", "org.pfmbench.embed-dims=")
               .replace("org.pfmbench.std='[0.229, 0.224, 0.225]'", "org.pfmbench.std='[0.229, 0.224'")
               .replace('org.pfmbench.depth="12"', 'org.pfmbench.depth="0"'))
    assert bad.count("embed-dims") == 1 and "0.224'" in bad and 'depth="0"' in bad
    (d / "Dockerfile").write_text(bad)
    with pytest.raises(SpecError) as err:
        parse_dockerfile(d / "Dockerfile")
    line = err.value.one_line()
    assert "problems:" in line and "\n" not in line
    assert "unknown label org.pfmbench.embed-dims (did you mean org.pfmbench.embed-dim?)" in line
    assert "org.pfmbench.std is not valid JSON" in line
    assert "org.pfmbench.depth: Input should be greater than 0 (got '0')" in line
    assert "embed_dim" not in line and "problem(s)" not in line  # LABEL keys, never pydantic's field names


def test_a_name_that_breaks_the_rule_says_the_rule_and_the_name_to_use(tmp_path):
    good = (Path(__file__).parents[1] / "models/phikon/Dockerfile").read_text()
    d = tmp_path / "my-ViT"
    d.mkdir()
    (d / "Dockerfile").write_text(good.replace('org.pfmbench.name="phikon"', 'org.pfmbench.name="my-ViT"'))
    with pytest.raises(SpecError) as err:
        parse_dockerfile(d / "Dockerfile")
    line = err.value.one_line()
    assert "lowercase letters, digits and underscores" in line and "'my_vit'" in line and "regex" not in line.lower()
    assert "1 problem:" in line
