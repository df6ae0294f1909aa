"""Image bookkeeping that needs no Docker daemon: content manifests, the lock, the apt pins, the release workflow.

The images themselves (offline builds, publish, pull, verify, reproduce) are in test_docker.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import constants
from harness.errors import ImageError
from harness.images import build, manifest
from harness.images.lock import LockEntry, entry_by_manifest, is_loopback, read_lock, read_manifest, write_lock
from harness.images.registry import publish
from harness.serve.identity import parse_server_id, server_id

from conftest import pinned_model_dir

ROOT = constants.PROJECT_ROOT
DIGEST = "sha256:" + "ab" * 32


def _entry(m: dict, registry: str = "ghcr.io/pfmbench") -> LockEntry:
    return LockEntry(registry=registry, image=f"{registry}/pfmbench/phikon", digest=DIGEST, base_digest="sha256:" + "cd" * 32,
                     manifest=manifest.manifest_hash(m))


def test_the_manifest_of_this_venv_is_complete_and_the_same_when_collected_again():
    first, second = manifest.collect(), manifest.collect()
    assert manifest.manifest_hash(first) == manifest.manifest_hash(second)
    python = first["python"]
    from importlib.metadata import version

    assert python["torch"]["version"] == version("torch") and python["timm"]["version"] == version("timm")
    assert re.fullmatch(r"[0-9a-f]{64}", python["torch"]["hash"])
    assert first["debian"]["dpkg"]["hash"]  # this machine is Debian: dpkg's own md5sums are hashed
    assert manifest.manifest_hash(first).startswith("sha256:")


def test_the_diff_names_each_package_and_what_differs():
    lock = {"schema": 1, "debian": {"libssl3": {"version": "3.0.20", "arch": "amd64", "hash": "a" * 64}},
            "python": {"timm": {"version": "1.0.31", "hash": "b" * 64}, "numpy": {"version": "2.2.0", "hash": "c" * 64}}}
    image = copy.deepcopy(lock)
    image["python"]["timm"] = {"version": "1.0.9", "hash": "d" * 64}
    del image["python"]["numpy"]
    image["python"]["left-behind"] = {"version": "0.1", "hash": "e" * 64}
    image["debian"]["libssl3"]["hash"] = "f" * 64
    assert manifest.diff(lock, image) == [
        "debian libssl3 3.0.20: same version, other files (hash aaaaaaaaaaaa in the lock, ffffffffffff in the image)",
        "python left-behind: 0.1 in the image, not in the lock",
        "python numpy: 2.2.0 in the lock, missing from the image",
        "python timm: 1.0.31 in the lock, 1.0.9 in the image",
    ]
    assert manifest.diff(lock, copy.deepcopy(lock)) == []
    assert manifest.packages_mismatch(image, {"timm": "1.0.9"}) == []
    assert manifest.packages_mismatch(image, {"timm": "1.0.31", "open_clip_torch": "3.3.0"}) == [
        "open_clip_torch==3.3.0 (the image has none)", "timm==1.0.31 (the image has 1.0.9)"]


def test_the_manifest_command_writes_the_file_and_refuses_unmet_pins(tmp_path):
    out = tmp_path / "manifest.json"
    from importlib.metadata import version

    ok = subprocess.run([sys.executable, "-m", "harness.images.manifest", "--write", str(out), "--pins", json.dumps({"timm": version("timm")})],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    written = json.loads(out.read_text())
    assert ok.stdout.strip().endswith(manifest.manifest_hash(written))
    bad = subprocess.run([sys.executable, "-m", "harness.images.manifest", "--write", str(tmp_path / "no.json"), "--pins", '{"timm": "0.0.1"}'],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and not (tmp_path / "no.json").exists()
    assert bad.stderr.strip().splitlines() == [f"the packages label pins timm==0.0.1 (the image has {version('timm')}): "
                                               "install them in the model's own layer (docs/docker.md)"]


def test_the_lock_round_trips_with_its_manifests_and_finds_an_image_by_manifest(tmp_path):
    lock = tmp_path / "images.lock"
    m = manifest.collect()
    write_lock({"phikon": _entry(m)}, {"phikon": m}, lock)
    assert read_lock(lock) == {"phikon": _entry(m)}
    assert read_manifest("phikon", lock) == m
    assert read_lock(lock)["phikon"].ref == f"ghcr.io/pfmbench/pfmbench/phikon@{DIGEST}"
    assert entry_by_manifest("phikon", manifest.manifest_hash(m), lock) == _entry(m)
    assert entry_by_manifest("phikon", "sha256:" + "0" * 64, lock) is None
    other = copy.deepcopy(m)
    other["python"]["timm"]["version"] = "0.0.1"
    with pytest.raises(ImageError, match="does not hash to its lock entry"):
        write_lock({"uni": _entry(m)}, {"uni": other}, lock)
    assert sorted(read_lock(lock)) == ["phikon"]  # the refused write left the lock as it was


def test_a_malformed_lock_entry_is_one_line_naming_it(tmp_path):
    lock = tmp_path / "images.lock"
    lock.write_text(yaml.safe_dump({"phikon": {"image": "r/pfmbench/phikon", "digest": "sha256:1234"}}))
    with pytest.raises(ImageError) as err:
        read_lock(lock)
    assert "entry 'phikon' is not valid (registry: Field required)" in err.value.one_line() and "publish phikon" in err.value.fix


@pytest.mark.parametrize(("registry", "loopback"), [
    ("127.0.0.1:5000", True), ("localhost:5000/me", True), ("[::1]:5000", True), ("127.3.4.5", True),
    ("ghcr.io/pfmbench", False), ("registry.example.org:443/team", False), ("10.0.0.4:5000", False),
])
def test_loopback_registries_are_told_apart(registry, loopback):
    assert is_loopback(registry) is loopback


def test_publishing_to_a_loopback_registry_never_writes_the_repository_lock(monkeypatch):
    monkeypatch.setattr(constants, "IMAGES_LOCK", ROOT / "models" / "images.lock")
    with pytest.raises(ImageError, match="loopback registry"):
        publish(["phikon"], "127.0.0.1:5000", lock=ROOT / "models" / "images.lock")


def test_the_apt_pins_are_exact_versions_and_the_base_never_asks_a_mirror():
    pins = build.read_apt_lock()
    assert {"python3", "python3-venv", "libpython3.11", "python3.11"} <= set(pins)
    assert all(re.fullmatch(r"[0-9]+:?[0-9A-Za-z.+~:-]+", v) for v in pins.values()), pins
    text = (ROOT / "models/_base/Dockerfile").read_text()
    assert "apt-get" not in text.replace("no apt-get update", "")


def test_a_model_with_its_own_pins_gets_a_manifest_layer_that_checks_them():
    layer = build.manifest_layer({"timm": "1.0.9"})
    assert "python -m harness.images.manifest --write /app/manifest.json --pins '{\"timm\": \"1.0.9\"}'" in layer
    assert layer.rstrip().endswith("USER 10001")  # the image still runs as the unprivileged user


def test_a_server_id_names_the_model_and_its_manifest():
    assert server_id("phikon") == "pfmbench/phikon/manifest=none"  # a checkout is not an image
    assert parse_server_id("pfmbench/phikon/manifest=none") == ("phikon", None)
    assert parse_server_id(f"pfmbench/uni2_h/manifest={DIGEST}") == ("uni2_h", DIGEST)
    assert parse_server_id(f"pfmbench/uni2_h manifest={DIGEST}") is None
    assert parse_server_id("triton") is None  # any other Triton server


def test_every_pfmbench_command_of_the_release_workflow_exists_with_its_options():
    workflow = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    commands = [line.strip() for step in workflow["jobs"]["images"]["steps"] for line in step.get("run", "").splitlines()
                if ".venv/bin/pfmbench" in line]
    assert len(commands) == 3
    for line in commands:
        words = line.split()[1:]
        sub = [w for w in words if re.fullmatch(r"[a-z]+", w)][:2]
        helptext = subprocess.run([sys.executable, "-m", "harness.cli", *sub, "--help"], capture_output=True, text=True,
                                  env={**os.environ, "COLUMNS": "200"})
        assert helptext.returncode == 0, (line, helptext.stderr)
        for option in (w for w in words if w.startswith("--")):
            assert option in helptext.stdout, (line, option)
    assert "make setup" in [step.get("run") for step in workflow["jobs"]["images"]["steps"]]


def test_publish_refuses_when_there_is_nothing_built(tmp_path, monkeypatch):
    """Without a daemon the message says how to start one; the lock is never written."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    lock = tmp_path / "images.lock"
    with pytest.raises(Exception, match="no Docker daemon answers"):
        publish(["phikon"], "127.0.0.1:5000", lock=lock)
    assert not lock.exists() and not Path(tmp_path / "manifests").exists()


def test_a_local_run_of_a_model_whose_pin_this_venv_does_not_meet_is_refused_before_anything_is_written(tmp_path):
    from importlib.metadata import version

    models = pinned_model_dir(tmp_path, "1.0.9", install=False)
    res = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--no-progress", "-m", "pinned_vit", "-d", "nuclei-sample",
                          "--runtime", "local", "--results-dir", str(tmp_path / "res")],
                         capture_output=True, text=True, env={**os.environ, "PFMBENCH_MODELS_DIR": str(models)})
    assert res.returncode == 1 and not (tmp_path / "res").exists()
    assert res.stderr.strip().splitlines() == [
        f"error: model 'pinned_vit' pins timm==1.0.9, but timm {version('timm')} is installed "
        "(fix: run 'make setup' (it installs requirements.lock), or use the model's image (RUNTIME=docker))"]


@pytest.mark.parametrize("command", ["pull", "verify"])
def test_pull_and_verify_with_an_empty_lock_say_to_publish_first(command, tmp_path):
    res = subprocess.run([sys.executable, "-m", "harness.cli", "images", command], capture_output=True, text=True,
                         env={**os.environ, "PFMBENCH_IMAGES_LOCK": str(tmp_path / "images.lock"), "COLUMNS": "300"})
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "publish first ('pfmbench images publish --registry R')" in res.stderr
