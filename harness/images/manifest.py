"""The content manifest of an image: every Debian and Python package in it, with its version and a content hash.

A registry digest says *that* two images differ; the manifest says *how*. It is written
into every image at build time (``/app/manifest.json``, the last layer), its hash goes
into ``models/images.lock``, and ``pfmbench images verify`` compares the three: the lock,
what the image recorded, and what is installed when a container of it runs.

The hashes are of what the package managers themselves record about the installed
files, so they are the same for the same inputs on any machine:

* Debian: the sha256 of ``/var/lib/dpkg/info/<pkg>.md5sums`` (dpkg's own per-file sums);
* Python: the sha256 of the distribution's ``RECORD`` (pip's per-file sha256 sums),
  less the lines of bytecode, which pip compiles at install time with a timestamp in it.

This module runs inside the image (``python -m harness.images.manifest``): standard
library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = 1
#: Where the image records its own manifest; the server reports its hash.
IMAGE_PATH = Path("/app/manifest.json")
DPKG_INFO = Path("/var/lib/dpkg/info")

Manifest = dict[str, Any]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def debian_packages(dpkg_info: Path = DPKG_INFO) -> dict[str, dict[str, str]]:
    """``{package: {version, arch, hash}}`` of every installed Debian package; empty where there is no dpkg."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    packages = {}
    for line in out.splitlines():
        status, name, version, arch = line.split("\t")
        if not status.startswith("ii"):
            continue  # removed, config files only: nothing of it is installed
        sums = next((p for p in (dpkg_info / f"{name}:{arch}.md5sums", dpkg_info / f"{name}.md5sums") if p.exists()), None)
        packages[name] = {"version": version, "arch": arch, "hash": _sha256(sums.read_bytes()) if sums else ""}
    return packages


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Open_Clip.Torch`` -> ``open-clip-torch``): the manifest's keys."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_hash(dist: metadata.Distribution) -> str:
    text = dist.read_text("RECORD") or ""
    kept = sorted(line for line in text.splitlines() if line and not line.split(",", 1)[0].endswith(".pyc"))
    return _sha256("\n".join(kept).encode())


def python_packages() -> dict[str, dict[str, str]]:
    """``{name: {version, hash}}`` of every distribution importable by this interpreter (names PEP 503-normalised)."""
    packages: dict[str, dict[str, str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        packages.setdefault(normalise(name), {"version": dist.version, "hash": _record_hash(dist)})  # the first on sys.path wins, as for import
    return packages


def collect() -> Manifest:
    """The manifest of the system this runs on."""
    return {"schema": SCHEMA, "debian": debian_packages(), "python": python_packages()}


def manifest_hash(manifest: Manifest) -> str:
    """``sha256:<hex>`` of the manifest's canonical JSON: the value ``images.lock`` records."""
    return "sha256:" + _sha256(canonical(manifest))


def canonical(manifest: Manifest) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def diff(expected: Manifest, found: Manifest, want: str = "the lock", have: str = "the image") -> list[str]:
    """Every package that differs, one line each: ``python timm: 1.0.31 in the lock, 1.0.9 in the image``."""
    lines = []
    for kind in ("debian", "python"):
        wanted, got = expected.get(kind, {}), found.get(kind, {})
        for name in sorted(set(wanted) | set(got)):
            w, h = wanted.get(name), got.get(name)
            if w == h:
                continue
            if h is None:
                lines.append(f"{kind} {name}: {w['version']} in {want}, missing from {have}")
            elif w is None:
                lines.append(f"{kind} {name}: {h['version']} in {have}, not in {want}")
            elif w["version"] != h["version"]:
                lines.append(f"{kind} {name}: {w['version']} in {want}, {h['version']} in {have}")
            else:
                lines.append(f"{kind} {name} {w['version']}: same version, other files (hash {w['hash'][:12]} in {want}, {h['hash'][:12]} in {have})")
    if expected.get("schema") != found.get("schema"):
        lines.append(f"manifest schema {expected.get('schema')} in {want}, {found.get('schema')} in {have}")
    return lines


def packages_mismatch(manifest: Manifest, pins: dict[str, str]) -> list[str]:
    """The pins of a model's ``packages`` label that the manifest's Python packages do not satisfy."""
    python = manifest.get("python", {})
    wrong = []
    for name, version in sorted(pins.items()):
        have = python.get(normalise(name), {}).get("version")
        if have != version:
            wrong.append(f"{name}=={version} (the image has {have or 'none'})")
    return wrong


def read_image_manifest(path: Path = IMAGE_PATH) -> Manifest | None:
    """The manifest this image recorded at build time; None outside an image (a checkout, a venv)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.images.manifest", description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the manifest here (else print it)")
    parser.add_argument("--pins", default="", help="a model's packages label (JSON): fail if the manifest does not satisfy it")
    args = parser.parse_args(argv)
    manifest = collect()
    wrong = packages_mismatch(manifest, json.loads(args.pins)) if args.pins else []
    if wrong:
        print(f"the packages label pins {', '.join(wrong)}: install them in the model's own layer (docs/docker.md)", file=sys.stderr)
        return 1
    if args.write:
        tmp = args.write.with_name(f".{args.write.name}.tmp")
        tmp.write_bytes(canonical(manifest) + b"\n")
        os.replace(tmp, args.write)
        print(f"{args.write}: {len(manifest['debian'])} Debian and {len(manifest['python'])} Python packages, {manifest_hash(manifest)}")
    else:
        sys.stdout.write(canonical(manifest).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
