"""The Docker daemon (SDK) and CLI (BuildKit builds), and the local names of pfmbench's images."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import constants
from harness.errors import ImageError, RuntimeUnavailableError

BASE_TAG = "pfmbench/base:latest"


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


def get_image(client, ref: str):
    """The local image ``ref``, or None."""
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _helper_labels(role: str) -> dict[str, str]:
    """Labels of a throwaway container: its owner (so a harness killed with -9 leaves it to the next reap) and its role."""
    from harness.runtime.owners import RUN_LABEL, owner_labels

    return {RUN_LABEL: f"pfmbench-{role}", "org.pfmbench.role": role, **owner_labels()}


@contextmanager
def helper_container(image: str, role: str, command: list[str] | None = None, start: bool = True, **kwargs: Any) -> Iterator[Any]:
    """A throwaway container of ``image`` (created, and started unless ``start`` is False), removed on every way out.

    Containers left by an earlier harness that was killed are reaped first.
    """
    from harness.runtime.owners import reap_orphan_containers

    client = docker_client()
    reap_orphan_containers(client)
    container = client.containers.create(image, command=command or ["true"], labels=_helper_labels(role), **kwargs)
    try:
        if start:
            container.start()
        yield container
    finally:
        container.remove(force=True)


def run_helper(image: str, role: str, command: list[str], **kwargs: Any) -> tuple[int, str, str]:
    """Run ``command`` in a throwaway container of ``image``: (exit status, stdout, stderr)."""
    with helper_container(image, role, command, **kwargs) as container:
        status = container.wait().get("StatusCode", 1)
        return (status, container.logs(stdout=True, stderr=False).decode(errors="replace"),
                container.logs(stdout=False, stderr=True).decode(errors="replace"))
