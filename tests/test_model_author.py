"""A model author's loop: labels checked against the built model, every problem named by its LABEL, a bad Dockerfile flagged in the listing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "models"


def _models_dir(tmp_path: Path, **dockerfiles: str) -> Path:
    """A models folder holding copies of real Dockerfiles (name -> text)."""
    for name, text in dockerfiles.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "Dockerfile").write_text(text)
    return tmp_path


def _pfmbench(models_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PFMBENCH_MODELS_DIR": str(models_dir), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=600, env=env)


def test_models_check_names_a_wrong_embed_dim_and_a_forgotten_reg_tokens_with_the_values_to_put(tmp_path):
    good = (MODELS / "hibou_b/Dockerfile").read_text()
    bad = good.replace('org.pfmbench.embed-dim="768"', 'org.pfmbench.embed-dim="1024"').replace('org.pfmbench.reg-tokens="4" \\\n', "")
    assert bad.count("1024") == 1 and "reg-tokens" not in bad
    res = _pfmbench(_models_dir(tmp_path, hibou_b=bad), "models", "check", "hibou_b")
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: models/hibou_b/Dockerfile")
    assert "org.pfmbench.embed-dim is 1024, the model has 768" in err and "org.pfmbench.reg-tokens is 0, the model has 4" in err
    assert "(put 768)" in res.stdout and "(put 4)" in res.stdout  # the table says what to write


def test_models_check_passes_a_correct_model_and_says_what_to_run_next(tmp_path):
    res = _pfmbench(_models_dir(tmp_path, phikon=(MODELS / "phikon/Dockerfile").read_text()), "models", "check", "phikon")
    assert res.returncode == 0, res.stderr
    assert "org.pfmbench.params-m" in res.stdout and "85.80" in res.stdout  # counted on the meta device
    assert "every measured label of phikon matches" in res.stdout and "make bench MODEL=phikon" in res.stdout


def test_one_bad_dockerfile_is_one_flagged_row_and_the_rest_are_listed(tmp_path):
    good = (MODELS / "phikon/Dockerfile").read_text()
    broken = good.replace('org.pfmbench.name="phikon"', 'org.pfmbench.name="broken"').replace("org.pfmbench.depth=", "org.pfmbench.deepth=")
    res = _pfmbench(_models_dir(tmp_path, phikon=good, broken=broken), "models")
    assert res.returncode == 0, res.stderr
    assert "phikon" in res.stdout and "ViT-B/16" in res.stdout and "invalid spec" in res.stdout
    assert "broken: 2 problems: unknown label org.pfmbench.deepth (did you mean org.pfmbench.depth?)" in " ".join(res.stdout.split())
    shutil.rmtree(tmp_path / "broken")
    assert "invalid spec" not in _pfmbench(tmp_path, "models").stdout


def test_a_row_says_whether_its_model_dockerfile_was_committed(tmp_path, monkeypatch):
    """git_commit's -dirty ignores untracked files; a new model's Dockerfile is untracked until committed: the row says so itself."""
    from harness import constants
    from harness.results.provenance import dockerfile_state

    repo = tmp_path / "models"
    (repo / "mine").mkdir(parents=True)
    dockerfile = repo / "mine" / "Dockerfile"
    dockerfile.write_text((MODELS / "phikon/Dockerfile").read_text())
    monkeypatch.setattr(constants, "MODELS_DIR", repo)
    assert dockerfile_state("mine")["model_dockerfile_committed"] is None  # not in a git checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    untracked = dockerfile_state("mine")
    assert untracked["model_dockerfile_committed"] is False and len(str(untracked["model_dockerfile_sha256"])) == 16
    subprocess.run([*git, "add", "mine/Dockerfile"], check=True)
    subprocess.run([*git, "commit", "-qm", "a model"], check=True)
    assert dockerfile_state("mine") == {**untracked, "model_dockerfile_committed": True}
    dockerfile.write_text(dockerfile.read_text() + "# edited\n")
    edited = dockerfile_state("mine")
    assert edited["model_dockerfile_committed"] is False and edited["model_dockerfile_sha256"] != untracked["model_dockerfile_sha256"]
