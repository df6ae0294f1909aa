"""The model zoo at a glance: each spec, whether its image is built, whether its weights are here.

``pfmbench models`` prints this; it only looks (a Docker query, a cache lookup) and
never builds or downloads.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import SpecError
from harness.models.spec import ModelSpec, get_spec, list_models


@dataclass(frozen=True)
class ZooEntry:
    name: str
    spec: ModelSpec | None  # None: its Dockerfile's labels do not validate (``problem`` says why)
    image: str  # "yes" | "no" | "?" (no Docker daemon)
    weights: str  # "yes" | "no" | "" (no spec)
    problem: str = ""


def _built_images() -> set[str] | None:
    """Tags of local images, or None when no daemon answers (one connection, one ping)."""
    from harness.errors import RuntimeUnavailableError
    from harness.images.docker import docker_client

    try:
        client = docker_client(timeout=3)
    except RuntimeUnavailableError:
        return None
    return {tag for image in client.images.list() for tag in image.tags}


def zoo_status(pattern: str = "*") -> tuple[list[ZooEntry], str]:
    """One entry per model matching ``pattern``, and a note when image status is unknown."""
    from harness.images.docker import local_tag
    from harness.models.weights import cached_weights

    tags = _built_images()
    entries = []
    for name in list_models(pattern):
        image = "?" if tags is None else ("yes" if local_tag(name) in tags else "no")
        try:
            spec = get_spec(name)
        except SpecError as exc:  # one bad Dockerfile is one flagged row, not a failed listing
            entries.append(ZooEntry(name, None, image, "", exc.message.split("invalid model spec: ", 1)[-1]))
            continue
        entries.append(ZooEntry(name, spec, image, "yes" if cached_weights(spec) else "no"))
    note = "image '?': no Docker daemon answered (start one, or set DOCKER_HOST)" if tags is None else ""
    return entries, note
