"""The architecture as a reader meets it: no import cycle, a torch-free config, thin CLI modules, one home for
environment variables and for errors, and documentation links that resolve."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from import_graph import cycles, graph  # noqa: E402

HARNESS = sorted((ROOT / "harness").rglob("*.py"))


def test_the_harness_has_no_import_cycle():
    assert graph()["harness.run.lifecycle"] >= {"harness.run.segmentation", "harness.run.roi"}  # the graph sees lazy imports
    assert cycles() == []


def test_the_config_imports_without_torch():
    code = "import sys, harness.config, harness.errors, harness.constants; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "harness" / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_modules_stay_thin(path):
    assert len(path.read_text().splitlines()) <= 200, f"{path.name}: move library logic out of the CLI"


def test_environment_variables_are_read_in_constants_only():
    read = re.compile(r"""(?:environ(?:\.get)?\s*[(\[]|getenv\s*\()\s*["'](PFMBENCH_\w+|HF_\w+)""")
    offenders = [f"{p.relative_to(ROOT)}: {m.group(1)}" for p in HARNESS if p.name != "constants.py" for m in read.finditer(p.read_text())]
    assert offenders == []


def test_every_error_class_lives_in_errors_py():
    offenders = []
    for path in HARNESS:
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith(("Error", "Exception")) for b in node.bases):
                offenders.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert offenders == []


def test_every_documentation_link_resolves():
    texts = [p for p in [*HARNESS, *ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *(ROOT / "models").glob("*.md"),
                         *(ROOT / "dataset_cards").glob("*.md"), ROOT / "Makefile"]]
    links = {(p.relative_to(ROOT), m) for p in texts for m in re.findall(r"\b((?:docs|dataset_cards|models)/[\w./-]+\.md)\b", p.read_text())}
    assert links, "the scan finds the links"
    missing = sorted(f"{src}: {link}" for src, link in links if not (ROOT / link).is_file())
    assert missing == []
