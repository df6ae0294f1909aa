"""The model server in its own container, through the docker SDK.

Each run gets a uniquely named container (runs can go side by side) that is removed on
every exit path. Triton's ports are published on 127.0.0.1 only, on ports Docker picks.
The container shares the host's IPC namespace so the client's shared-memory regions are
visible to the server (a private /dev/shm makes registration fail); it runs as the
image's non-root user; weights are mounted read-only. No hub token ever enters the
container: weights were resolved on the host (``harness.models.weights``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
import uuid
from typing import Any, Unpack

from harness import constants
from harness.errors import ServerError
from harness.images.docker import docker_client
from harness.images.registry import ensure_image, image_identity
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights
from harness.runtime.owners import RUN_LABEL, owner_labels, reap_orphan_containers
from harness.runtime.served import ServedOptions, ServedRuntime, normalisation_args, server_dtype_args
from harness.util.devices import docker_device_requests, inside_device, resolve_device
from harness.util.procgroup import STOP_NOW

log = logging.getLogger("pfmbench.runtime")

GRPC_PORT = 8001
HTTP_PORT = 8000
WEIGHTS_MOUNT = "/weights"


def server_container(spec: ModelSpec, weights: ResolvedWeights, device: str, name: str, token: str, engine: str = "torch",
                     dtype: str = "bf16") -> dict[str, Any]:
    """The ``containers.run`` arguments of a model server on ``device`` (``cpu`` or ``cuda:N``), the image aside.

    A GPU is handed over as a device request for that GPU alone (the NVIDIA container
    runtime), which the server inside sees as ``cuda``. Ports are published on 127.0.0.1.
    """
    volumes, weights_arg = {}, "random"
    if weights.path is not None:
        weights_arg = f"{WEIGHTS_MOUNT}/{weights.path.name}"
        volumes[str(weights.path)] = {"bind": weights_arg, "mode": "ro"}
    return {
        "command": ["python", "-m", "harness.serve", "--model", spec.name, "--weights", weights_arg, "--init-seed", str(weights.init_seed),
                    "--device", inside_device(device), "--engine", engine, "--host", "0.0.0.0", "--grpc-port", str(GRPC_PORT),
                    "--http-port", str(HTTP_PORT), *server_dtype_args(device, dtype), *normalisation_args(spec)],
        "name": name, "environment": {constants.TOKEN_ENV: token},
        "ports": {f"{GRPC_PORT}/tcp": ("127.0.0.1", None), f"{HTTP_PORT}/tcp": ("127.0.0.1", None)},
        "ipc_mode": "host", "volumes": volumes, "labels": {RUN_LABEL: name, "org.pfmbench.model": spec.name, **owner_labels()},
        "device_requests": docker_device_requests(device),
    }


class DockerRuntime(ServedRuntime):
    name = "docker"

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, image: str | None = None, device: str | None = None, engine: str = "torch",
                 dtype: str = "bf16", **options: Unpack[ServedOptions]) -> None:
        super().__init__(spec, weights, **options)
        self.image_ref = image
        self.engine, self.dtype = engine, dtype
        self.device = resolve_device(device)  # decided on the host: the container sees only that GPU
        self.container = None
        self._digest: str | None = None
        self._status: int | None = None

    @property
    def image_digest(self) -> str | None:
        return self._digest

    def start(self) -> None:
        client = docker_client()
        reap_orphan_containers(client)
        image = client.images.get(self.image_ref) if self.image_ref else ensure_image(self.spec.name)
        self._digest = image_identity(image, self.spec.name)
        token = secrets.token_hex(16)
        name = f"pfmbench-{self.spec.name}-{uuid.uuid4().hex[:8]}"
        self.container = client.containers.run(image.id, detach=True, **server_container(self.spec, self.weights, self.device, name, token, self.engine, self.dtype))
        log.info("container %s from %s on %s", name, self._digest, self.device)
        self._connect(f"127.0.0.1:{self._published_port(GRPC_PORT)}", token, http_url=f"127.0.0.1:{self._published_port(HTTP_PORT)}")
        self._wait_ready()

    def _published_port(self, port: int) -> int:
        deadline = time.monotonic() + 30
        assert self.container is not None
        while time.monotonic() < deadline:
            self.container.reload()
            bindings = (self.container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{port}/tcp")
            if bindings:
                return int(bindings[0]["HostPort"])
            if self.container.status == "exited":
                break
            time.sleep(0.1)
        raise ServerError(f"container for '{self.spec.name}' published no port; log tail: {self.logs(5)}", "the log tail above is the container's; it is removed on exit")

    def alive(self) -> bool:
        if self.container is None:
            return False
        try:
            self.container.reload()
        except Exception:  # removed underneath us
            return False
        if self.container.status in ("exited", "dead", "removing"):
            self._status = self.container.attrs.get("State", {}).get("ExitCode")
            return False
        return True

    def exit_status(self) -> int | None:
        return self._status

    def logs(self, lines: int = 15) -> str:
        try:
            return self.container.logs(tail=lines).decode(errors="replace") if self.container else ""
        except Exception:
            return ""

    @property
    def where_logs(self) -> str:
        return "the log tail above (the container is removed on exit)"

    def stop(self) -> None:
        self._stop(now=False)

    def interrupt(self) -> None:
        """The server in the container reaps Triton and exits at once (``STOP_NOW``); ``docker stop`` stays behind it."""
        self._stop(now=True)

    def _stop(self, now: bool) -> None:
        self._close_client()
        container, self.container = self.container, None
        if container is None:
            return
        if now:
            with contextlib.suppress(Exception):  # already gone or dead: stop/remove below say nothing either
                container.kill(signal=STOP_NOW.name)
        try:
            container.stop(timeout=10)
        except Exception:  # already gone or dead
            pass
        try:
            container.remove(force=True)
        except Exception:
            pass
