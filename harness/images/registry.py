"""Publish images to a registry, pull them back by digest, and pick the image a docker run uses.

``publish`` pushes the base and each model image, reads each image's content manifest
and writes ``models/images.lock`` in one go; ``pull`` fetches exactly the locked digest.
A row records :func:`image_identity`: the registry digest reference once pushed.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from harness import __version__
from harness.errors import ImageError
from harness.images.docker import BASE_TAG, docker_client, get_image, helper_container, local_tag
from harness.images.lock import REPO_LOCK, LockEntry, is_loopback, lock_entry, lock_path, read_lock, write_lock
from harness.images.manifest import IMAGE_PATH, Manifest, manifest_hash

Log = Callable[[str], None]


def image_identity(image, model: str | None = None) -> str:
    """What a row records: a registry digest reference once the image was pushed or pulled (the one
    ``models/images.lock`` pins for ``model`` where the image has it, since others can pull that one), else its local id."""
    repo_digests = image.attrs.get("RepoDigests") or []
    entry = read_lock().get(model) if model else None
    if entry is not None and entry.ref in repo_digests:
        return entry.ref
    return repo_digests[0] if repo_digests else image.id


def image_manifest(image) -> Manifest:
    """The content manifest ``image`` recorded at build time (read from a created, never started, container)."""
    import docker.errors

    try:
        with helper_container(image.id, "read-manifest", start=False) as container:
            stream, _ = container.get_archive(str(IMAGE_PATH))
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile(IMAGE_PATH.name)
                return json.loads(member.read()) if member else {}
    except docker.errors.NotFound:
        raise ImageError(f"{image.tags[0] if image.tags else image.short_id} records no content manifest ({IMAGE_PATH})",
                         "rebuild it with 'pfmbench images build' (images built before this harness version have none)") from None


def _push(client, image, repo: str, tag: str, log: Log) -> str:
    """Push ``image`` as ``repo:tag``; the registry's digest of it."""
    image.tag(repo, tag)
    log(f"pushing {repo}:{tag}")
    for chunk in client.images.push(repo, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise ImageError(f"push of {repo}:{tag} failed: {chunk['error']}", f"check that the registry {repo.split('/')[0]} is reachable and you are logged in ('docker login')")
    image.reload()
    digests = [d.split("@", 1)[1] for d in image.attrs.get("RepoDigests", []) if d.startswith(repo + "@")]
    if not digests:
        raise ImageError(f"push of {repo}:{tag} returned no digest", "retry the push")
    return digests[0]


def publish(models: list[str], registry: str, lock: Path | None = None, log: Log = print) -> dict[str, LockEntry]:
    """Push ``pfmbench/base`` and each model image to ``registry``; write their lock entries and manifests.

    The images must be built. Each image's manifest is read back from the image itself and
    its hash checked before anything is pushed; the lock is written once every push
    succeeded, so a failed publish leaves the previous lock. A loopback registry is
    refused for the repository's own lock: nobody else could pull what it names.
    """
    lock = lock or lock_path()
    if is_loopback(registry) and lock.resolve() == REPO_LOCK.resolve():
        raise ImageError(f"{registry} is a loopback registry: only this machine can pull from it, and models/images.lock is shared",
                         "pass --lock PATH for a private lock (or PFMBENCH_IMAGES_LOCK), or publish to a registry others reach")
    client = docker_client()
    base = get_image(client, BASE_TAG)
    if base is None:
        raise ImageError(f"{BASE_TAG} is not built", "run 'pfmbench images build' first")
    images, manifests = {}, {}
    for model in models:
        image = get_image(client, local_tag(model))
        if image is None:
            raise ImageError(f"{local_tag(model)} is not built", f"run 'pfmbench images build {model}' first")
        if image.attrs["RootFS"]["Layers"][: len(base.attrs["RootFS"]["Layers"])] != base.attrs["RootFS"]["Layers"]:
            raise ImageError(f"{local_tag(model)} was not built on the current {BASE_TAG}", f"rebuild it: 'pfmbench images build {model} --skip-base'")
        images[model], manifests[model] = image, image_manifest(image)
    base_digest = _push(client, base, f"{registry}/pfmbench/base", __version__, log)
    entries = {}
    for model, image in images.items():
        repo = f"{registry}/pfmbench/{model}"
        digest = _push(client, image, repo, __version__, log)
        entries[model] = LockEntry(registry=registry, image=repo, digest=digest, base_digest=base_digest, manifest=manifest_hash(manifests[model]))
    write_lock(entries, manifests, lock)
    return entries


def pull(model: str, log: Log = print):
    """Pull exactly the locked digest of ``model`` and tag it as the local image."""
    return pull_ref(lock_entry(model).ref, model, log)


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
    from harness.images.build import build_base, build_model

    client = docker_client()
    image = get_image(client, local_tag(model))
    if image is not None:
        return image
    if model in read_lock():
        return pull(model, log)
    if not build:
        raise ImageError(f"no image for '{model}'", f"run 'pfmbench images build {model}'")
    if get_image(client, BASE_TAG) is None:
        build_base(log=log)
    build_model(model, log)
    return client.images.get(local_tag(model))
