"""``models/images.lock``: each model's published image, pinned so anyone can pull and check exactly it.

An entry says where the image is (``registry``, ``image``), what it is (``digest``, the
registry's manifest digest), what it was built on (``base_digest``, the published
``pfmbench/base``) and what is in it (``manifest``, the hash of its content manifest,
:mod:`harness.images.manifest`). The manifest itself is kept beside the lock
(``manifests/<model>.json``), so ``images verify`` can say which package differs, not
only that something does.

Only ``pfmbench images publish`` writes it, all entries at once: a failed publish leaves
the previous lock.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import constants
from harness.errors import ImageError
from harness.images.manifest import Manifest, canonical, manifest_hash
from harness.util.atomic import atomic_write_text

_DIGEST = r"^sha256:[0-9a-f]{64}$"
#: How a row records an image known only by its content manifest (an ``--endpoint`` server no lock entry names).
MANIFEST_PREFIX = "manifest:"
#: The repository's own lock, which everyone pulls from: never a loopback registry in it.
REPO_LOCK = constants.PROJECT_ROOT / "models" / "images.lock"
HEADER = ("# model -> published image, pinned. Written by 'pfmbench images publish' (or the release workflow);\n"
          "# read by 'images pull', 'images verify' and 'reproduce --pull'. Content manifests: manifests/<model>.json\n")


class LockEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    registry: str = Field(description="registry host and namespace, e.g. ghcr.io/pfmbench")
    image: str = Field(description="the repository: <registry>/pfmbench/<model>")
    digest: str = Field(pattern=_DIGEST, description="the registry's manifest digest of the image")
    base_digest: str = Field(pattern=_DIGEST, description="the registry digest of the pfmbench/base it was built on")
    manifest: str = Field(pattern=_DIGEST, description="sha256 of the image's content manifest (/app/manifest.json)")

    @property
    def ref(self) -> str:
        """What ``docker pull`` takes: ``<image>@<digest>``."""
        return f"{self.image}@{self.digest}"


def lock_path() -> Path:
    return constants.IMAGES_LOCK


def manifests_dir(path: Path | None = None) -> Path:
    return (path or lock_path()).parent / "manifests"


def read_lock(path: Path | None = None) -> dict[str, LockEntry]:
    """Every entry of the lock; empty when there is no lock. A malformed entry is a one-line error naming it."""
    path = path or lock_path()
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ImageError(f"{path} is not a mapping of model -> entry", "restore it from git or rerun 'pfmbench images publish'")
    entries = {}
    for model, raw in data.items():
        try:
            entries[model] = LockEntry.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ImageError(f"{path}: entry '{model}' is not valid ({where}: {first['msg']})",
                             f"rerun 'pfmbench images publish {model} --registry R'") from None
    return entries


def lock_entry(model: str, path: Path | None = None) -> LockEntry:
    entry = read_lock(path).get(model)
    if entry is None:
        raise ImageError(f"{path or lock_path()} has no entry for '{model}'",
                         f"publish it ('pfmbench images publish {model} --registry R'), or build it ('pfmbench images build {model}')")
    return entry


def entry_by_manifest(model: str, manifest: str, path: Path | None = None) -> LockEntry | None:
    """The lock entry of ``model`` whose content manifest hashes to ``manifest``, if the lock has it."""
    entry = read_lock(path).get(model)
    return entry if entry is not None and entry.manifest == manifest else None


def read_manifest(model: str, path: Path | None = None) -> Manifest | None:
    """The content manifest recorded beside the lock for ``model``; None if there is none."""
    f = manifests_dir(path) / f"{model}.json"
    return json.loads(f.read_text()) if f.exists() else None


def write_lock(entries: dict[str, LockEntry], manifests: dict[str, Manifest], path: Path | None = None) -> None:
    """Merge ``entries`` into the lock and their manifests beside it; the lock itself is replaced in one rename."""
    path = path or lock_path()
    for model, entry in entries.items():
        if manifest_hash(manifests[model]) != entry.manifest:
            raise ImageError(f"the manifest of '{model}' does not hash to its lock entry", "rebuild the image and publish it again")
    merged = {**read_lock(path), **entries}
    for model, manifest in manifests.items():
        atomic_write_text(manifests_dir(path) / f"{model}.json", canonical(manifest).decode() + "\n")
    body = {m: e.model_dump() for m, e in sorted(merged.items())}
    atomic_write_text(path, HEADER + yaml.safe_dump(body, sort_keys=True))


def is_loopback(registry: str) -> bool:
    """True for a registry only this machine can reach (``localhost``, ``127.0.0.0/8``, ``[::1]``)."""
    host = urlsplit("//" + registry.split("/", 1)[0]).hostname or ""  # drops the port and an IPv6 address's brackets
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
