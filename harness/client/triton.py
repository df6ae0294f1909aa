"""Triton client for the ``features`` model: system shared memory first, gRPC bytes as fallback.

(HTTP with binary tensors is there too, for ``pfmbench perf`` to put a number on it.)

Token grids are large (a batch of 32 ViT-B grids at 224 px is 9.6 MB of fp16), so the
outputs go through POSIX shared memory regions registered with the server when both
sides share ``/dev/shm`` (local runtime, or a container with ``--ipc=host``). If the
server cannot open the regions (another host, a private IPC namespace), the client
says so once and moves tensors inside gRPC messages instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from harness import constants
from harness.client.regions import SHM_DIR, new_prefix
from harness.models.spec import ModelSpec
from harness.serve import protocol
from harness.util.leases import hold, release

log = logging.getLogger("pfmbench.client")

Transfer = Literal["auto", "shm", "grpc", "http"]
_GRPC_TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"
#: seconds before the first retry of a failed request; doubled for each further one
RETRY_BACKOFF_S = 1.0
#: seconds a control call (health, shared-memory registration) may take: a stalled server must not hang the harness
CONTROL_TIMEOUT_S = 30.0
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")


def _transient(exc: Exception) -> bool:
    """Whether a failed request may succeed if sent again: a gRPC timeout or an unavailable or overloaded server."""
    status = getattr(exc, "status", None)
    return callable(status) and any(code in str(status()) for code in _TRANSIENT)


@dataclass
class _Region:
    name: str
    handle: object
    size: int
    lease: int | None  # held while the region exists: one left by a killed harness is swept (client/regions.py)


@dataclass
class FeatureClient:
    """Calls the ``features`` model of one server.

    ``transfer="auto"`` tries shared memory and falls back to gRPC; ``"shm"`` fails
    instead of falling back; ``"grpc"`` never uses shared memory; ``"http"`` sends
    binary tensors over Triton's HTTP endpoint at ``http_url`` (slowest; measured, not used by runs).
    """

    url: str
    spec: ModelSpec
    token: str | None = None
    transfer: Transfer = "auto"
    timeout_s: float = constants.REQUEST_TIMEOUT_S  # PFMBENCH_REQUEST_TIMEOUT
    retries: int = constants.REQUEST_RETRIES  # PFMBENCH_REQUEST_RETRIES
    #: Called with (retry number, the error) before each retry, e.g. to tell the user.
    on_retry: Callable[[int, Exception], None] | None = None
    #: Polled while a request is in flight; returning False abandons the request
    #: (a server process that died mid-request would otherwise leave it hanging).
    alive: Callable[[], bool] | None = None
    http_url: str | None = None
    _regions: dict[str, _Region] = field(default_factory=dict, init=False)
    _active: Literal["shm", "grpc"] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        import tritonclient.grpc as grpcclient

        opts = [("grpc.max_receive_message_length", (1 << 31) - 1), ("grpc.max_send_message_length", (1 << 31) - 1)]
        self._grpc = grpcclient.InferenceServerClient(self.url, channel_args=opts)
        self._headers = {_GRPC_TOKEN_HEADER: self.token} if self.token else None
        self._prefix = new_prefix()
        self._http = None
        if self.transfer == "http":
            if not self.http_url:
                raise ValueError("transfer 'http' needs the server's HTTP address (http_url)")
            import tritonclient.http as httpclient

            self._http = httpclient.InferenceServerClient(self.http_url, network_timeout=self.timeout_s, connection_timeout=self.timeout_s)

    @property
    def active_transfer(self) -> str:
        """The path in use: ``shm`` or ``grpc`` (before the first call, the one that will be tried first)."""
        return self._active or (self.transfer if self.transfer in ("grpc", "http") else "shm")

    def ready(self) -> bool:
        try:
            return (self._grpc.is_server_ready(client_timeout=CONTROL_TIMEOUT_S)
                    and self._grpc.is_model_ready(constants.TRITON_MODEL, client_timeout=CONTROL_TIMEOUT_S))
        except Exception:  # connection refused while starting
            return False

    def server_id(self) -> str:
        """The server's id (Triton's ``--id``): a pfmbench server names its model and image manifest there (serve/identity.py)."""
        return self._grpc.get_server_metadata(headers=self._headers, client_timeout=CONTROL_TIMEOUT_S).name

    # --- shared memory -------------------------------------------------------------------

    def _region(self, role: str, size: int) -> _Region:
        """A registered region of at least ``size`` bytes for ``role`` (re-created when too small)."""
        import tritonclient.utils.shared_memory as shm

        current = self._regions.get(role)
        if current is not None and current.size >= size:
            return current
        if current is not None:
            self._drop(role)
        # A new name per size: a region re-created larger never reuses the old name, so an unregister that did not
        # reach the server (a control call timed out under load) cannot make this registration ALREADY_EXISTS.
        name = f"{self._prefix}_{role}_{size}"
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        path = SHM_DIR / name
        # A server under another uid (container user 10001) must be able to open it.
        os.chmod(path, 0o666)
        region = _Region(name, handle, size, hold(path))
        self._regions[role] = region
        try:
            self._grpc.register_system_shared_memory(name, f"/{name}", size, headers=self._headers, client_timeout=CONTROL_TIMEOUT_S)
        except Exception:
            self._drop(role, registered=False)
            raise
        return region

    def _drop(self, role: str, registered: bool = True) -> None:
        import tritonclient.utils.shared_memory as shm

        region = self._regions.pop(role)
        if registered:
            try:
                self._grpc.unregister_system_shared_memory(region.name, headers=self._headers, client_timeout=CONTROL_TIMEOUT_S)
            except Exception:  # server already gone: nothing to unregister
                pass
        shm.destroy_shared_memory_region(region.handle)
        release(region.lease)

    def _infer_shm(self, images: np.ndarray, blocks: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm

        regions = {
            "in": self._region("in", images.nbytes + blocks.nbytes),
            protocol.TOKENS: self._region(protocol.TOKENS, protocol.nbytes(shapes[protocol.TOKENS])),
            protocol.CLS: self._region(protocol.CLS, protocol.nbytes(shapes[protocol.CLS])),
        }
        shm.set_shared_memory_region(regions["in"].handle, [images, blocks])
        inp_images = grpcclient.InferInput(protocol.IMAGES, list(images.shape), "UINT8")
        inp_images.set_shared_memory(regions["in"].name, images.nbytes)
        inp_blocks = grpcclient.InferInput(protocol.BLOCKS, list(blocks.shape), "INT32")
        inp_blocks.set_shared_memory(regions["in"].name, blocks.nbytes, offset=images.nbytes)
        outputs = []
        for name in (protocol.TOKENS, protocol.CLS):
            out = grpcclient.InferRequestedOutput(name)
            out.set_shared_memory(regions[name].name, protocol.nbytes(shapes[name]))
            outputs.append(out)
        self._call([inp_images, inp_blocks], outputs)
        return tuple(  # type: ignore[return-value]
            np.array(shm.get_contents_as_numpy(regions[n].handle, np.float16, shapes[n]), copy=True)
            for n in (protocol.TOKENS, protocol.CLS)
        )

    # --- plain gRPC ----------------------------------------------------------------------

    def _infer_grpc(self, images: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tritonclient.grpc as grpcclient

        inp_images = grpcclient.InferInput(protocol.IMAGES, list(images.shape), "UINT8")
        inp_images.set_data_from_numpy(images)
        inp_blocks = grpcclient.InferInput(protocol.BLOCKS, list(blocks.shape), "INT32")
        inp_blocks.set_data_from_numpy(blocks)
        outputs = [grpcclient.InferRequestedOutput(n) for n in (protocol.TOKENS, protocol.CLS)]
        res = self._call([inp_images, inp_blocks], outputs)
        return res.as_numpy(protocol.TOKENS), res.as_numpy(protocol.CLS)

    def _infer_http(self, images: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tritonclient.http as httpclient

        inp_images = httpclient.InferInput(protocol.IMAGES, list(images.shape), "UINT8")
        inp_images.set_data_from_numpy(images, binary_data=True)
        inp_blocks = httpclient.InferInput(protocol.BLOCKS, list(blocks.shape), "INT32")
        inp_blocks.set_data_from_numpy(blocks, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in (protocol.TOKENS, protocol.CLS)]
        assert self._http is not None
        res = self._http.infer(constants.TRITON_MODEL, [inp_images, inp_blocks], outputs=outputs)
        return res.as_numpy(protocol.TOKENS), res.as_numpy(protocol.CLS)

    def _call(self, inputs: list, outputs: list):
        """One request, waited for in slices so a dead server is noticed at once."""
        done = threading.Event()
        box: dict[str, object] = {}

        def callback(result, error) -> None:
            box["result"], box["error"] = result, error
            done.set()

        ctx = self._grpc.async_infer(constants.TRITON_MODEL, inputs, callback, outputs=outputs, client_timeout=self.timeout_s)
        while not done.wait(0.2):
            if self.alive is not None and not self.alive():
                ctx.cancel()
                raise ConnectionError("the server process exited during the request")
        if box["error"] is not None:
            raise box["error"]  # type: ignore[misc]
        return box["result"]

    def infer(self, images: np.ndarray, blocks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[B, H, W, 3]`` -> (fp16 tokens ``[B, L, h, w, D]``, fp16 cls ``[B, L, D]``).

        Sent again after a transient failure (a timeout, an unavailable server; the region
        registration included) with exponential backoff: extraction is idempotent. A server
        process that died is not transient (:class:`ConnectionError` from :meth:`_call`)
        and fails at once.
        """
        for attempt in range(self.retries + 1):
            try:
                return self._infer_once(images, blocks)
            except Exception as exc:
                if attempt == self.retries or not _transient(exc) or (self.alive is not None and not self.alive()):
                    raise
                wait_s = RETRY_BACKOFF_S * 2**attempt
                log.warning("request failed (%s); retry %d of %d in %.0f s", str(exc).splitlines()[0], attempt + 1, self.retries, wait_s)
                if self.on_retry is not None:
                    self.on_retry(attempt + 1, exc)
                time.sleep(wait_s)
        raise AssertionError("unreachable")

    def _infer_once(self, images: np.ndarray, blocks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        b, height, width, _ = images.shape
        block_arr = np.tile(np.asarray(blocks, np.int32), (b, 1))
        shapes = protocol.output_shapes(self.spec, b, height, width, len(blocks))
        if self.transfer == "http":
            return self._infer_http(images, block_arr)
        if self.transfer != "grpc" and self._active != "grpc":
            try:
                result = self._infer_shm(images, block_arr, shapes)
                self._active = "shm"
                return result
            except Exception as exc:
                if self.transfer == "shm" or self._active == "shm":
                    raise
                log.warning("shared memory unavailable (%s); moving features over gRPC instead", str(exc).splitlines()[0])
                self._active = "grpc"
        return self._infer_grpc(images, block_arr)

    def close(self) -> None:
        for role in list(self._regions):
            self._drop(role)
        self._grpc.close()
        if self._http is not None:
            self._http.close()
