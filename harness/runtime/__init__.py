"""Pick and open a runtime: ``auto`` | ``docker`` | ``local`` | ``inprocess``."""

from __future__ import annotations

import logging
from typing import Literal, get_args

from harness.errors import ConfigError, RuntimeUnavailableError
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights
from harness.runtime.base import Runtime
from harness.runtime.inprocess import InProcessRuntime
from harness.runtime.local import LocalRuntime

log = logging.getLogger("pfmbench.runtime")

RuntimeName = Literal["auto", "docker", "local", "inprocess"]


def docker_available() -> tuple[bool, str]:
    """Whether a Docker daemon answers (and why not)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True, "a Docker daemon answers"
    except Exception as exc:
        return False, f"no Docker daemon answers ({type(exc).__name__})"


RUNTIMES: tuple[str, ...] = get_args(RuntimeName)


def choose_runtime(name: str) -> tuple[str, str]:
    """Resolve ``auto`` to a concrete runtime name, with the reason to tell the user.

    ``endpoint`` (a server started elsewhere, ``--endpoint``) is accepted as it is.
    """
    if name not in (*RUNTIMES, "endpoint"):
        raise ConfigError(f"unknown runtime '{name}'", f"use one of {', '.join(RUNTIMES)}")
    if name != "auto":
        return name, f"runtime {name} (asked for)"
    ok, why = docker_available()
    if ok:
        return "docker", f"runtime docker ({why})"
    return "local", f"runtime local ({why}; the model server runs as a local subprocess)"


def make_runtime(name: str, spec: ModelSpec, weights: ResolvedWeights, endpoint: str | None = None, **kwargs: object) -> Runtime:
    if endpoint:
        from harness.runtime.endpoint import EndpointRuntime

        return EndpointRuntime(spec, weights, endpoint)
    if name == "local":
        return LocalRuntime(spec, weights, **kwargs)  # type: ignore[arg-type]
    if name == "inprocess":
        return InProcessRuntime(spec, weights, device=kwargs.get("device"), engine=kwargs.get("engine") or "torch", dtype=kwargs.get("dtype") or "bf16")  # type: ignore[arg-type]
    if name == "docker":
        ok, why = docker_available()
        if not ok:
            raise RuntimeUnavailableError(f"RUNTIME=docker needs a Docker daemon: {why}", "start dockerd and set DOCKER_HOST (see docs/docker.md), or use RUNTIME=local")
        from harness.runtime.docker import DockerRuntime

        return DockerRuntime(spec, weights, **kwargs)  # type: ignore[arg-type]
    raise RuntimeUnavailableError(f"unknown runtime '{name}'", "use one of auto, docker, local, inprocess")


__all__ = ["RUNTIMES", "Runtime", "RuntimeName", "choose_runtime", "make_runtime", "docker_available"]
