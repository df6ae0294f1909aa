"""Model images: build (base + one thin layer per model), lock by digest, push and pull.

The base image holds Python, every package of ``requirements.lock`` (installed from a
wheelhouse with ``--no-index``: hermetic) and the harness. A model image is its
Dockerfile: ``FROM`` the base, LABELs = its spec, and a copy of that Dockerfile so the
server inside reads the same labels. ``models/images.lock`` pins each model to an image
reference and digest; ``pfmbench images pull`` fetches exactly that.

Builds go through the Docker CLI with BuildKit (the base's ``RUN --mount=type=bind``
keeps the 3 GB wheelhouse out of the layers, and the docker SDK cannot drive BuildKit);
tagging, pushing, pulling and running go through the SDK.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from harness import __version__, constants
from harness.errors import ImageError, RuntimeUnavailableError
from harness.util.atomic import atomic_write_text

BASE_TAG = "pfmbench/base:latest"
LOCK_FILE = constants.IMAGES_LOCK
BUILD_DIR = constants.BUILD_DIR
DEFAULT_BASE_FROM = constants.DOCKER_BASE
DEFAULT_REGISTRY = constants.REGISTRY

Log = Callable[[str], None]


def local_tag(model: str) -> str:
    return f"pfmbench/{model}:latest"


def docker_client(timeout: int = 600):
    """A pinged client of the daemon at DOCKER_HOST; a one-line error naming the fix when none answers."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:
        raise RuntimeUnavailableError(
            f"no Docker daemon answers ({type(exc).__name__})",
            "start dockerd and set DOCKER_HOST (see docs/docker.md), or use RUNTIME=local",
        ) from exc


def docker_cli() -> str:
    """The Docker CLI that has BuildKit here (Debian's 20.10 client; a newer one without buildx cannot)."""
    for cand in (constants.DOCKER_CLI, "/usr/bin/docker", shutil.which("docker")):
        if cand and Path(cand).exists():
            return cand
    raise ImageError("no docker CLI found", "install docker.io (or set PFMBENCH_DOCKER_CLI)")


# --- lock ---------------------------------------------------------------------------------


def read_lock(path: Path | None = None) -> dict[str, dict[str, str]]:
    path = path or LOCK_FILE
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ImageError(f"{path} is not a mapping of model -> {{image, digest}}", "restore it from git or rerun 'pfmbench images push'")
    return data


def write_lock(entries: dict[str, dict[str, str]], path: Path | None = None) -> None:
    path = path or LOCK_FILE
    header = "# model -> image reference pinned by digest. Written by 'pfmbench images push'; read by 'pfmbench images pull'.\n"
    atomic_write_text(path, header + yaml.safe_dump(dict(sorted(entries.items())), sort_keys=True))


# --- build --------------------------------------------------------------------------------


#: The locks an image installs: the shared set, then the GPU set over it (onnxruntime-gpu for the CPU
#: onnxruntime). Every image carries the GPU set: torch in it is already a CUDA build, and
#: onnxruntime-gpu keeps the CPU provider, so one image serves a CPU host and a GPU host alike.
IMAGE_LOCKS = ("requirements.lock", "requirements-gpu.lock")


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in IMAGE_LOCKS:
        digest.update((constants.PROJECT_ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_wheelhouse(log: Log = print) -> Path:
    """Every file of :data:`IMAGE_LOCKS` in ``build/wheelhouse`` (downloaded once per set of locks).

    Wheels where PyPI has them; an sdist otherwise (fairscale, which MUSK's torchscale
    imports, ships only one). The image build turns an sdist into a wheel offline, with
    the locked setuptools from the same wheelhouse.
    """
    house = BUILD_DIR / "wheelhouse"
    stamp = house / f".lock-{_lock_digest()}"
    if stamp.exists():
        return house
    house.mkdir(parents=True, exist_ok=True)
    for name in IMAGE_LOCKS:
        lock = constants.PROJECT_ROOT / name
        log(f"downloading the wheels of {lock.name} into {house} (once per lock)")
        res = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--prefer-binary", "-r", str(lock), "-d", str(house)],
            capture_output=True, text=True,
        )
        if res.returncode != 0:
            tail = " | ".join(line for line in res.stderr.splitlines() if "WARNING: Location" not in line)[-600:]
            raise ImageError(f"pip download of {lock.name} failed: {tail}", "check that PyPI (or your index) is reachable")
        shutil.copy2(lock, house / lock.name)
    stamp.touch()
    return house


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(".lock-"):
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


def build_base(base_from: str = DEFAULT_BASE_FROM, log: Log = print) -> str:
    """Build ``pfmbench/base:latest`` from ``base_from``; returns the tag."""
    docker_client()
    house = ensure_wheelhouse(log)
    ctx = BUILD_DIR / "context-base"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    root = constants.PROJECT_ROOT
    shutil.copy2(root / "models/_base/Dockerfile", ctx / "Dockerfile")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, ctx / name)
    shutil.copytree(root / "harness", ctx / "harness", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _link_tree(house, ctx / "wheels")
    log(f"building {BASE_TAG} from {base_from}")
    try:
        _run_build([docker_cli(), "build", "--build-arg", f"BASE={base_from}", "--label", f"org.pfmbench.harness-version={__version__}",
                    "-t", BASE_TAG, str(ctx)], BASE_TAG, log)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return BASE_TAG


def build_model(model: str, log: Log = print) -> str:
    """Build ``pfmbench/<model>:latest`` from ``models/<model>/Dockerfile`` on top of the base."""
    from harness.models.spec import get_spec

    get_spec(model)
    client = docker_client()
    try:
        client.images.get(BASE_TAG)
    except Exception as exc:
        raise ImageError(f"the base image {BASE_TAG} is not built", "run 'pfmbench images build --base-only' (or 'make images')") from exc
    log(f"building {local_tag(model)}")
    _run_build([docker_cli(), "build", "--build-arg", f"BASE_IMAGE={BASE_TAG}", "-t", local_tag(model), str(constants.MODELS_DIR / model)], local_tag(model), log)
    return local_tag(model)


# --- identity, push, pull -------------------------------------------------------------------


def image_identity(image) -> str:
    """What a row records: the registry digest reference if the image was pushed, else its local id."""
    repo_digests = image.attrs.get("RepoDigests") or []
    return repo_digests[0] if repo_digests else image.id


def push(model: str, registry: str = DEFAULT_REGISTRY, log: Log = print) -> dict[str, str]:
    """Push the model image to ``registry`` and record its digest in ``models/images.lock``."""
    client = docker_client()
    try:
        image = client.images.get(local_tag(model))
    except Exception as exc:
        raise ImageError(f"{local_tag(model)} is not built", f"run 'pfmbench images build {model}'") from exc
    repo = f"{registry}/pfmbench/{model}"
    image.tag(repo, "latest")
    log(f"pushing {repo}:latest")
    for chunk in client.images.push(repo, tag="latest", stream=True, decode=True):
        if "error" in chunk:
            raise ImageError(f"push of {repo} failed: {chunk['error']}", f"check that the registry {registry} is reachable and you are logged in")
    image.reload()
    digests = [d for d in image.attrs.get("RepoDigests", []) if d.startswith(repo + "@")]
    if not digests:
        raise ImageError(f"push of {repo} returned no digest", "retry the push")
    entry = {"image": repo, "digest": digests[0].split("@", 1)[1]}
    lock = read_lock()
    lock[model] = entry
    write_lock(lock)
    return entry


def pull(model: str, log: Log = print):
    """Pull exactly the locked digest of ``model`` and tag it as the local image."""
    entry = read_lock().get(model)
    if not entry:
        raise ImageError(f"models/images.lock has no entry for '{model}'", f"build it ('pfmbench images build {model}') or push it first")
    return pull_ref(f"{entry['image']}@{entry['digest']}", model, log)


def pull_ref(ref: str, model: str, log: Log = print):
    client = docker_client()
    log(f"pulling {ref}")
    try:
        image = client.images.pull(ref)
    except Exception as exc:
        raise ImageError(f"cannot pull {ref}: {str(exc).splitlines()[0][:300]}", "check the registry address and that the digest was pushed") from exc
    image.tag(local_tag(model).split(":")[0], "latest")
    return image


def ensure_image(model: str, build: bool = True, log: Log = print):
    """The image to run ``model`` in: local if present, else pulled by the locked digest, else built."""
    import docker.errors

    client = docker_client()
    try:
        return client.images.get(local_tag(model))
    except docker.errors.ImageNotFound:
        pass
    if model in read_lock():
        return pull(model, log)
    if not build:
        raise ImageError(f"no image for '{model}'", f"run 'pfmbench images build {model}'")
    try:
        client.images.get(BASE_TAG)
    except docker.errors.ImageNotFound:
        build_base(log=log)
    build_model(model, log)
    return client.images.get(local_tag(model))
