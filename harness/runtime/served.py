"""What every runtime with a real Triton server shares: the client, health, and death detection.

Subclasses say how to start and stop the server process (``local``: a subprocess;
``docker``: a container; ``endpoint``: someone else's) and how to tell whether it is
still alive; this class turns a failed request into :class:`ServerDiedError` when the
server is gone, or :class:`ServerError` otherwise.

``infer`` is thread-safe: each call borrows a client from a small pool (one per request
in flight, :data:`~harness.constants.IN_FLIGHT`), each with its own shared-memory
regions, so the next batch travels while the server computes this one.
"""

from __future__ import annotations

import abc
import queue
import threading
import time
from typing import TypedDict

import numpy as np

from harness import constants
from harness.client.triton import FeatureClient, Transfer
from harness.errors import ServerDiedError, ServerError
from harness.models.spec import ModelSpec, get_spec
from harness.models.weights import ResolvedWeights
from harness.runtime.base import Runtime


def server_dtype_args(device: str, dtype: str) -> list[str]:
    """The server's ``--dtype`` on a GPU; nothing on a CPU, which computes in fp32 (and an older image's server knows no ``--dtype``)."""
    return ["--dtype", dtype] if device.startswith("cuda") else []


class ServedOptions(TypedDict, total=False):
    """How any served runtime talks to its server (subclasses add where the server runs)."""

    startup_timeout_s: float
    request_timeout_s: float
    transfer: Transfer


class ServedRuntime(Runtime):
    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, startup_timeout_s: float = constants.STARTUP_TIMEOUT_S,
                 transfer: Transfer = "auto", request_timeout_s: float = constants.REQUEST_TIMEOUT_S, in_flight: int = constants.IN_FLIGHT) -> None:
        super().__init__(spec, weights)
        self.startup_timeout_s, self.request_timeout_s = startup_timeout_s, request_timeout_s
        self._transfer = transfer
        self.in_flight = max(1, in_flight)
        self._clients: list[FeatureClient] = []
        self._idle: queue.SimpleQueue[FeatureClient] = queue.SimpleQueue()
        self._pool_lock = threading.Lock()
        self._failed = False

    @property
    def client(self) -> FeatureClient | None:
        """The first client of the pool (health checks, the transfer in use); None before start and after stop."""
        return self._clients[0] if self._clients else None

    @property
    def transfer(self) -> str:
        return self.client.active_transfer if self.client else self._transfer

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the server process (or container) still runs."""

    @abc.abstractmethod
    def exit_status(self) -> int | None:
        """Exit code (negative: signal) once dead."""

    @abc.abstractmethod
    def logs(self, lines: int = 15) -> str:
        """The server's last log lines."""

    @property
    def where_logs(self) -> str:
        return "the server log"

    def _connect(self, url: str, token: str | None, http_url: str | None = None) -> None:
        self.url, self.token, self._http_url = url, token, http_url  # other processes may share this server (pfmbench sweep)
        self._idle.put(self._new_client())

    @property
    def connections(self) -> int:
        """Clients opened so far: more than one only when requests were really in flight together."""
        return len(self._clients)

    def _new_client(self) -> FeatureClient:
        client = FeatureClient(self.url, self.spec, token=self.token, transfer=self._transfer, alive=self.alive, http_url=self._http_url,
                               timeout_s=self.request_timeout_s)
        self._clients.append(client)
        return client

    def _borrow(self) -> FeatureClient:
        """An idle client; a new one while fewer than ``in_flight`` exist; else wait for one to come back."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._pool_lock:
                if len(self._clients) < self.in_flight:
                    return self._new_client()
            return self._idle.get()

    def _wait_ready(self) -> None:
        assert self.client
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                self._failed = True
                raise ServerError(
                    f"the model server for '{self.spec.name}' exited with code {self.exit_status()} while starting; "
                    f"log tail: {' | '.join(self.logs(5).splitlines())}",
                    f"see {self.where_logs}",
                )
            if self.client.ready():
                return
            time.sleep(0.25)
        self._failed = True
        raise ServerError(
            f"the model server for '{self.spec.name}' did not become healthy within {self.startup_timeout_s:.0f} s; "
            f"log tail: {' | '.join(self.logs(5).splitlines())}",
            f"see {self.where_logs}; a large model on a CPU may need longer: pass --startup-timeout <seconds> (or set PFMBENCH_STARTUP_TIMEOUT)",
        )

    def health(self) -> bool:
        return self.client is not None and self.alive() and self.client.ready()

    def _dead(self, grace_s: float = 8.0) -> bool:
        """Whether the server has exited (waiting briefly: Triton dies a few seconds after its parent)."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            if self.client and self.client.ready():
                return False
            time.sleep(0.2)
        return not self.alive()

    def infer(self, images: np.ndarray, blocks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        assert self.client, "start() the runtime first"
        if not self.alive():
            self._failed = True
            raise ServerDiedError(self.spec.name, self.exit_status(), self.logs(), self.where_logs)
        client = self._borrow()
        try:
            return client.infer(images, blocks)
        except Exception as exc:
            self._failed = True
            if self._dead():
                raise ServerDiedError(self.spec.name, self.exit_status(), self.logs(), self.where_logs) from exc
            raise ServerError(
                f"the model server for '{self.spec.name}' failed a request: {str(exc).splitlines()[0]}",
                f"see {self.where_logs}",
            ) from exc
        finally:
            self._idle.put(client)

    def _close_client(self) -> None:
        clients, self._clients, self._idle = self._clients, [], queue.SimpleQueue()
        for client in clients:
            try:
                client.close()
            except Exception:  # the server may already be gone; the regions are unlinked anyway
                pass


def normalisation_args(spec: ModelSpec) -> list[str]:
    """``--mean``/``--std`` for a server whose spec normalises otherwise than the model's labels (:func:`spec_for_preset`); else none."""
    own = get_spec(spec.name)
    if (spec.mean, spec.std) == (own.mean, own.std):
        return []
    return ["--mean", ",".join(map(str, spec.mean)), "--std", ",".join(map(str, spec.std))]
