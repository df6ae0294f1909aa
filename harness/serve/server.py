"""The in-container (or local subprocess) feature server: one PyTriton bind built from a ModelSpec.

``serve()`` blocks until SIGINT/SIGTERM; SIGTERM is turned into KeyboardInterrupt so
PyTriton shuts Triton down cleanly (its workspace and shared memory are removed),
also when the server is PID 1 in a container, which otherwise ignores SIGTERM. The
clean shutdown has a deadline (:func:`~harness.util.procgroup.die_with_parent_promptly`):
a server whose harness was killed is gone within about a second, Triton and stubs too.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from harness import constants
from harness.client.regions import PREFIX, SHM_DIR
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights, resolve_weights
from harness.serve import protocol
from harness.serve.engines import build_engine
from harness.serve.identity import server_id
from harness.serve.workspace import new_workspace
from harness.util.devices import DEFAULT_EXTRACT_DTYPE, resolve_device
from harness.util.leases import release
from harness.util.procgroup import command_line, die_with_parent_promptly, kill_own_group, live_members, mapped_files

log = logging.getLogger("pfmbench.serve")


def make_infer_fn(spec: ModelSpec, weights: ResolvedWeights, device: str, engine: str = "torch", dtype: str = DEFAULT_EXTRACT_DTYPE):
    """The batched numpy -> numpy function Triton calls (model built once, here)."""
    from pytriton.decorators import batch, group_by_values

    extractor = build_engine(spec, weights, device, engine, dtype)

    @batch
    @group_by_values(protocol.BLOCKS)
    def infer(images: np.ndarray, blocks: np.ndarray) -> dict[str, np.ndarray]:
        tokens, cls = extractor.extract(images, tuple(int(b) for b in blocks[0]))
        return {protocol.TOKENS: tokens, protocol.CLS: cls}

    return infer


def serve(
    spec: ModelSpec,
    weights: str = "random",
    init_seed: int = 0,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    device: str | None = None,
    max_batch: int = protocol.MAX_BATCH,
    engine: str = "torch",
    dtype: str = DEFAULT_EXTRACT_DTYPE,
) -> None:
    """Serve ``spec``'s token features until interrupted (SIGINT or SIGTERM), then leave no process behind."""
    workspace, lease = new_workspace()  # a server killed outright leaves it unheld: the next run sweeps it
    die_with_parent_promptly(reap=lambda: _reap_triton(workspace))
    try:
        _serve_until_stopped(spec, weights, init_seed, host, http_port, grpc_port, metrics_port, device, max_batch, engine, dtype, workspace / "pytriton")
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        _reap_triton(workspace)  # after a clean shutdown: nothing left to do; after a hung one, the rest
        release(lease)


def _reap_triton(workspace: Path) -> None:
    """SIGKILL what is left of Triton (server, backend stubs, PyTriton's store), then remove its shared memory and workspace.

    A clean PyTriton shutdown does all of this itself; this is for one cut short (an
    orphaned server, or ``STOP_NOW`` from an interrupted harness). The regions are found
    before anything is killed: the backend stubs' by Triton's ``shm-region-prefix-name``
    argument on their command lines, PyTriton's tensor store's (``psm_*``, ``pytrtion*``)
    as the ``/dev/shm`` files this group has mapped. A client's ``pfm_`` regions, also
    mapped by Triton, are the client's to remove.
    """
    me = os.getpid()
    members = [pid for pid in live_members(me) if pid != me] + [me]
    prefixes = {m.group(1) for pid in members for m in [re.search(r"shm-region-prefix-name=([\w-]+)", command_line(pid))] if m}
    mapped = {path for pid in members for path in mapped_files(pid, SHM_DIR) if not path.name.startswith(PREFIX)}
    kill_own_group()
    for prefix in prefixes:
        for region in SHM_DIR.glob(f"{prefix}*"):
            region.unlink(missing_ok=True)
    for region in mapped:
        region.unlink(missing_ok=True)
    shutil.rmtree(workspace, ignore_errors=True)


def _serve_until_stopped(spec: ModelSpec, weights: str, init_seed: int, host: str, http_port: int, grpc_port: int, metrics_port: int,
                         device: str | None, max_batch: int, engine: str, dtype: str, workspace: Path) -> None:
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    device = resolve_device(device)
    resolved = resolve_weights(spec, weights, init_seed=init_seed)
    infer = make_infer_fn(spec, resolved, device, engine, dtype)
    token = constants.triton_token()
    security = TritonSecurityConfig(access_token=token) if token else TritonSecurityConfig(restricted_endpoints=[])
    config = TritonConfig(
        http_address=host, grpc_address=host, metrics_address=host,
        http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        log_verbose=0, exit_timeout_secs=5, id=server_id(spec.name),  # read back by --endpoint rows (serve/identity.py)
    )
    with Triton(config=config, security_config=security, workspace=workspace) as triton:
        triton.bind(
            model_name=constants.TRITON_MODEL,
            infer_func=infer,
            inputs=[
                Tensor(name=protocol.IMAGES, dtype=np.uint8, shape=(-1, -1, 3)),
                Tensor(name=protocol.BLOCKS, dtype=np.int32, shape=(-1,)),
            ],
            outputs=[
                Tensor(name=protocol.TOKENS, dtype=np.float16, shape=(-1, -1, -1, spec.embed_dim)),
                Tensor(name=protocol.CLS, dtype=np.float16, shape=(-1, spec.embed_dim)),
            ],
            # no dynamic batcher: the client already batches, and a request computed as sent gives the same features
            # whatever else is in flight (a batcher would merge requests by timing; the numbers could then vary)
            config=ModelConfig(max_batch_size=max_batch, batcher=None),
            strict=True,
        )
        log.info("serving %s (%s weights) on %s grpc=%d http=%d device=%s engine=%s dtype=%s", spec.name, resolved.label, host, grpc_port, http_port, device, engine,
                 dtype if device.startswith("cuda") else "fp32")
        print(f"pfmbench: serving {spec.name} on {host}:{grpc_port} (grpc)", flush=True)
        triton.serve()
