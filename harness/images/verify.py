"""``pfmbench images verify``: is this image the one the lock pins, and is it what it says it is?

Three comparisons, each reported with what differs:

1. the registry digest of the local image against the lock's ``digest``;
2. the content manifest the image recorded at build time against the lock's ``manifest``
   hash; where they differ, package by package against ``manifests/<model>.json``;
3. what is installed when a container of the image runs (network off) against what it
   recorded: a layer added or changed after the build shows up here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ImageError
from harness.images.docker import docker_client, get_image, local_tag, run_helper
from harness.images.lock import lock_entry, read_manifest
from harness.images.manifest import Manifest, diff, manifest_hash
from harness.images.registry import image_manifest, pull_ref

Log = Callable[[str], None]


@dataclass
class Verification:
    """What was checked for one model, and every difference found."""

    model: str
    image: str
    matched: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def installed_manifest(image) -> Manifest:
    """The manifest computed by a container of ``image`` (network off), from what is installed in it."""
    status, out, err = run_helper(image.id, "verify", ["python", "-m", "harness.images.manifest"], network_disabled=True)
    if status != 0:
        raise ImageError(f"the manifest could not be computed in {image.short_id}: {(err.strip().splitlines() or ['no output'])[-1][:300]}",
                         "rebuild the image with 'pfmbench images build'")
    return json.loads(out)


def verify(model: str, lock: Path | None = None, pull: bool = False, image: str | None = None, log: Log = print) -> Verification:
    """Check ``model``'s image against its lock entry: ``image`` if given, else the locked digest if it is here, else
    ``pfmbench/<model>:latest``; with ``pull``, the locked digest is pulled when neither is here."""
    entry = lock_entry(model, lock)
    client = docker_client()
    ref = image or local_tag(model)
    found = get_image(client, image) if image else get_image(client, entry.ref) or get_image(client, ref)
    if found is None:
        if image or not pull:
            raise ImageError(f"there is no local image {ref}", f"pull the locked one: 'pfmbench images verify {model} --pull'")
        found = pull_ref(entry.ref, model, log)
    result = Verification(model, ref)

    repo_digests = found.attrs.get("RepoDigests") or []
    pushed = [d.split("@", 1)[1] for d in repo_digests]
    if entry.ref in repo_digests:
        result.matched.append(f"digest {entry.digest} ({entry.image})")
    else:
        result.differences.append(f"digest: the lock pins {entry.digest}; the local image has "
                                  f"{', '.join(pushed) if pushed else 'none (built here: never pushed or pulled)'}")

    recorded = image_manifest(found)
    counts = f"{len(recorded.get('debian', {}))} Debian and {len(recorded.get('python', {}))} Python packages"
    recorded_hash = manifest_hash(recorded)
    if recorded_hash == entry.manifest:
        result.matched.append(f"manifest {entry.manifest} ({counts})")
    else:
        result.differences.append(f"manifest: the lock pins {entry.manifest}; the image recorded {recorded_hash}")
        reference = read_manifest(model, lock)
        result.differences += [f"  {line}" for line in diff(reference, recorded)] if reference else [
            "  (no manifests/<model>.json beside the lock: which packages differ cannot be said)"]

    installed = installed_manifest(found)
    if installed == recorded:
        result.matched.append("installed packages equal the recorded manifest")
    else:
        result.differences.append("installed packages differ from the manifest the image recorded:")
        result.differences += [f"  {line}" for line in diff(recorded, installed, "the recorded manifest", "the running image")]
    return result
