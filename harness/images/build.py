"""Build the images offline: ``pfmbench/base`` and one thin image per ``models/<name>/Dockerfile``.

Every input is fetched before the build, into ``build/``: the wheels of the locks
(``build/wheelhouse``), the pinned Debian packages (``build/debs``, from
``models/_base/apt.lock``) and a model's own pins (its ``packages`` label). The builds
themselves run with ``--network none``: what is in an image is what those files say,
and a build that would reach the network fails instead.

A model image is its Dockerfile plus one layer the harness adds: the content manifest
(:mod:`harness.images.manifest`), written by the image's own Python after everything
else is installed, and checked against the model's ``packages`` label.

Builds go through the Docker CLI with BuildKit (bind mounts keep the 3 GB wheelhouse
out of the layers, and the docker SDK cannot drive BuildKit); everything else goes
through the SDK.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from harness import __version__, constants
from harness.errors import ImageError
from harness.images.docker import BASE_TAG, docker_cli, docker_client, get_image, local_tag, run_helper
from harness.images.manifest import IMAGE_PATH

BUILD_DIR = constants.BUILD_DIR
DEFAULT_BASE_FROM = constants.DOCKER_BASE
APT_LOCK = constants.PROJECT_ROOT / "models/_base/apt.lock"
#: The label every built image carries: the harness version that built it.
HARNESS_LABEL = "org.pfmbench.harness-version"

Log = Callable[[str], None]

#: The locks an image installs: the shared set, then the GPU set over it (onnxruntime-gpu for the CPU
#: onnxruntime). Every image carries the GPU set: torch in it is already a CUDA build, and
#: onnxruntime-gpu keeps the CPU provider, so one image serves a CPU host and a GPU host alike.
IMAGE_LOCKS = ("requirements.lock", "requirements-gpu.lock")


def _files_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    return digest.hexdigest()[:16]


def _pip_download(args: list[str], what: str, dest: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--prefer-binary", *args, "-d", str(dest)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        tail = " | ".join(line for line in res.stderr.splitlines() if "WARNING: Location" not in line)[-600:]
        raise ImageError(f"pip download of {what} failed: {tail}", "check that PyPI (or your index) is reachable")


def ensure_wheelhouse(log: Log = print) -> Path:
    """Every file of :data:`IMAGE_LOCKS` in ``build/wheelhouse`` (downloaded once per set of locks).

    Wheels where PyPI has them; an sdist otherwise (fairscale, which MUSK's torchscale
    imports, ships only one). The image build turns an sdist into a wheel offline, with
    the locked setuptools from the same wheelhouse.
    """
    house = BUILD_DIR / "wheelhouse"
    stamp = house / f".lock-{_files_digest([constants.PROJECT_ROOT / n for n in IMAGE_LOCKS])}"
    if stamp.exists():
        return house
    house.mkdir(parents=True, exist_ok=True)
    for name in IMAGE_LOCKS:
        lock = constants.PROJECT_ROOT / name
        log(f"downloading the wheels of {lock.name} into {house} (once per lock)")
        _pip_download(["-r", str(lock)], lock.name, house)
        shutil.copy2(lock, house / lock.name)
    stamp.touch()
    return house


def read_apt_lock(path: Path = APT_LOCK) -> dict[str, str]:
    """``{package: version}`` of ``models/_base/apt.lock``."""
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.strip().partition("=")
            if not sep or not name or not version:
                raise ImageError(f"{path}:{n}: '{line}' is not package=version", "fix the line (tools/apt_lock.py writes the file)")
            pins[name] = version
    return pins


def ensure_debs(base_from: str, log: Log = print) -> Path:
    """The ``.deb`` files of :data:`APT_LOCK` in ``build/debs`` (downloaded once per lock).

    ``apt-get download`` runs in a throwaway container of ``base_from`` (its own Debian
    sources, network on): this is the one step of a build that reaches a Debian mirror,
    and it happens before the build, never in it.
    """
    debs = BUILD_DIR / "debs"
    pins = read_apt_lock()
    stamp = debs / f".lock-{_files_digest([APT_LOCK])}"
    if stamp.exists():
        return debs
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    log(f"downloading the {len(pins)} Debian packages of apt.lock into {debs} (once per lock)")
    spec = " ".join(f"{name}={version}" for name, version in pins.items())
    status, _, err = run_helper(base_from, "apt-download", ["sh", "-c", f"apt-get update -q >/dev/null && apt-get download -q {spec} && chown {os.getuid()}:{os.getgid()} /debs/*.deb"],
                                volumes={str(debs.resolve()): {"bind": "/debs", "mode": "rw"}}, working_dir="/debs", user="root")
    if status != 0:
        raise ImageError(f"apt-get download in {base_from} failed: {(err.strip().splitlines() or ['no output'])[-1][:300]}",
                         "a pin the mirror no longer has: re-pin with 'python tools/apt_lock.py' (or point the image's sources at snapshot.debian.org)")
    shutil.copy2(APT_LOCK, debs / "apt.lock")
    stamp.touch()
    return debs


def _dist_files(folder: Path, name: str, version: str) -> list[Path]:
    """The wheels and sdists of ``name==version`` in ``folder`` (names compared PEP 503-normalised)."""
    stem = f"{name}-{version}".lower().replace("-", "_").replace(".", "_")
    return [p for p in folder.iterdir() if p.is_file()
            and p.name.lower().replace("-", "_").replace(".", "_").startswith(stem + "_")]


def ensure_model_wheels(pins: dict[str, str], log: Log = print) -> list[Path]:
    """The wheels of a model's own pins (its ``packages`` label): from the lock's wheelhouse where it has them,
    else downloaded once into ``build/wheelhouse/models``."""
    house = BUILD_DIR / "wheelhouse"
    own = house / "models"
    own.mkdir(parents=True, exist_ok=True)
    found = []
    for name, version in sorted(pins.items()):
        have = _dist_files(house, name, version) or _dist_files(own, name, version)
        if not have:
            log(f"downloading {name}=={version} (the model's own pin)")
            _pip_download([f"{name}=={version}"], f"{name}=={version}", own)
            have = _dist_files(own, name, version)
        found += have
    return found


def _link(files: list[Path], dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def _run_build(cmd: list[str], what: str, log: Log) -> None:
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    assert proc.stdout
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith(("#", "Step")) and ("DONE" in line or "Step" in line):
            log(f"  {line.rstrip()}")
    if proc.wait() != 0:
        failed = [line for line in lines if "ERROR" in line or "error:" in line.lower()]
        for line in lines[-40:]:  # the failing step's own output, which the one-line error cannot hold
            log(f"  | {line}")
        raise ImageError(f"building {what} failed: {(failed or lines[-1:])[0][:300]}",
                         "read the build output above; 'make base-offline' builds a base with no registry access")


def _build(context: Path, tag: str, build_args: dict[str, str], log: Log, dockerfile: Path | None = None, no_cache: bool = False) -> None:
    """``docker build`` with BuildKit and the network off."""
    cmd = [docker_cli(), "build", "--network", "none", "--label", f"{HARNESS_LABEL}={__version__}", "-t", tag]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if dockerfile:
        cmd += ["-f", str(dockerfile)]
    if no_cache:
        cmd.append("--no-cache")
    _run_build([*cmd, str(context)], tag, log)


def build_base(base_from: str = DEFAULT_BASE_FROM, log: Log = print) -> str:
    """Build ``pfmbench/base:latest`` from ``base_from``, offline; returns the tag."""
    docker_client()
    house = ensure_wheelhouse(log)
    debs = ensure_debs(base_from, log)
    ctx = BUILD_DIR / "context-base"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    root = constants.PROJECT_ROOT
    shutil.copy2(root / "models/_base/Dockerfile", ctx / "Dockerfile")
    src = ctx / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, src / name)
    shutil.copytree(root / "harness", src / "harness", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _link([f for f in house.iterdir() if f.is_file() and not f.name.startswith(".")], ctx / "wheels")
    _link([f for f in debs.iterdir() if f.is_file() and not f.name.startswith(".")], ctx / "debs")
    log(f"building {BASE_TAG} from {base_from} (network off)")
    try:
        _build(ctx, BASE_TAG, {"BASE": base_from}, log)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return BASE_TAG


def manifest_layer(pins: dict[str, str]) -> str:
    """The Dockerfile lines the harness appends to a model's own: record the manifest, check the pins."""
    check = f" --pins '{json.dumps(pins, sort_keys=True)}'" if pins else ""
    return ("\n# Added by pfmbench images build: the content manifest, after everything else.\nUSER root\n"
            f"RUN python -m harness.images.manifest --write {IMAGE_PATH}{check}\nUSER 10001\n")


def build_model(model: str, log: Log = print, no_cache: bool = False) -> str:
    """Build ``pfmbench/<model>:latest`` from ``models/<model>/Dockerfile`` on the base, offline.

    The context is the model's folder plus ``wheels/`` holding the wheels of its own pins,
    which its Dockerfile installs in a layer of its own (docs/docker.md, "A model's own
    packages").
    """
    from harness.models.spec import get_spec

    spec = get_spec(model)
    if get_image(docker_client(), BASE_TAG) is None:
        raise ImageError(f"the base image {BASE_TAG} is not built", "run 'pfmbench images build --base-only' (or 'make images')")
    ctx = BUILD_DIR / f"context-{model}"
    shutil.rmtree(ctx, ignore_errors=True)
    shutil.copytree(constants.MODELS_DIR / model, ctx)
    _link(ensure_model_wheels(spec.packages, log), ctx / "wheels")
    dockerfile = BUILD_DIR / f"Dockerfile.{model}"
    dockerfile.write_text((ctx / "Dockerfile").read_text() + manifest_layer(spec.packages))
    log(f"building {local_tag(model)}")
    try:
        _build(ctx, local_tag(model), {"BASE_IMAGE": BASE_TAG}, log, dockerfile=dockerfile, no_cache=no_cache)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
        dockerfile.unlink(missing_ok=True)
    return local_tag(model)
