"""The model server as a subprocess on loopback ports: the default where no Docker daemon runs.

The server leads its own process group (:func:`~harness.util.procgroup.spawn_group`: one
``killpg`` reaches Triton and its Python backend stubs too, and the group is gone within
about a second of the harness dying, even by SIGKILL). ``stop()`` sends SIGTERM, which
the server turns into a clean Triton shutdown, then SIGKILLs whatever is left of the group.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Unpack

from harness import constants
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights
from harness.runtime.served import ServedOptions, ServedRuntime, normalisation_args, server_dtype_args
from harness.util.devices import inside_device, visible_devices_env
from harness.util.procgroup import spawn_group, stop_group

log = logging.getLogger("pfmbench.runtime")

def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free TCP ports on ``host`` (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def server_env(token: str) -> dict[str, str]:
    """Environment for a server subprocess.

    Triton's Python-backend stub loads ``libpython3.x.so`` by name; with a pyenv or
    venv interpreter the system one would be found first and fail to load the model,
    so the interpreter's own LIBDIR goes first on ``LD_LIBRARY_PATH``.
    """
    env = dict(os.environ)
    env[constants.TOKEN_ENV] = token
    env["PFMBENCH_MODELS_DIR"] = str(constants.MODELS_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalRuntime(ServedRuntime):
    name = "local"

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, device: str | None = None, engine: str = "torch",
                 threads: int | None = None, dtype: str = "bf16", **options: Unpack[ServedOptions]) -> None:
        super().__init__(spec, weights, **options)
        self.device = device
        self.engine, self.dtype = engine, dtype
        self.threads = threads  # torch's intra-op threads in the server (default: torch's own choice)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def _command(self, ports: list[int]) -> list[str]:
        http, grpc, metrics = ports
        cmd = [
            sys.executable, "-m", "harness.serve", "--model", self.spec.name,
            "--weights", self.weights.to_arg(), "--init-seed", str(self.weights.init_seed),
            "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        ]
        cmd += normalisation_args(self.spec)
        if self.device:
            cmd += ["--device", inside_device(self.device)] + server_dtype_args(self.device, self.dtype)
        if self.engine != "torch":
            cmd += ["--engine", self.engine]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd

    def start(self) -> None:
        token = secrets.token_hex(16)
        ports = free_ports(3)
        constants.LOGS_DIR.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{self.spec.name}-", suffix=".log", dir=constants.LOGS_DIR)
        self.log_path = Path(name)
        with os.fdopen(fd, "wb") as logf:
            env = {**server_env(token), **(visible_devices_env(self.device) if self.device else {})}  # the chosen GPU is the server's cuda
            self.proc = spawn_group(self._command(ports), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self._connect(f"127.0.0.1:{ports[1]}", token, http_url=f"127.0.0.1:{ports[0]}")
        log.info("local server for %s: pid %d, grpc 127.0.0.1:%d", self.spec.name, self.proc.pid, ports[1])
        self._wait_ready()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def logs(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines) if self.log_path else ""

    @property
    def where_logs(self) -> str:
        return f"the full log at {self.log_path}"

    def stop(self) -> None:
        self._stop(now=False)

    def interrupt(self) -> None:
        """The server reaps Triton and exits at once (``STOP_NOW``) instead of draining it (seconds)."""
        self._stop(now=True)

    def _stop(self, now: bool) -> None:
        self._close_client()
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, now=now)
        if self.log_path is not None and not self._failed:
            self.log_path.unlink(missing_ok=True)
