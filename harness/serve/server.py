"""The in-container (or local subprocess) feature server: one PyTriton bind built from a ModelSpec.

``serve()`` blocks until SIGINT/SIGTERM; SIGTERM is turned into KeyboardInterrupt so
PyTriton shuts Triton down cleanly (its workspace and shared memory are removed),
also when the server is PID 1 in a container, which otherwise ignores SIGTERM.
"""

from __future__ import annotations

import logging
import signal

import numpy as np
import torch

from harness import constants
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights, resolve_weights
from harness.serve import protocol
from harness.serve.engines import build_engine

log = logging.getLogger("pfmbench.serve")


def make_infer_fn(spec: ModelSpec, weights: ResolvedWeights, device: str, engine: str = "torch"):
    """The batched numpy -> numpy function Triton calls (model built once, here)."""
    from pytriton.decorators import batch, group_by_values

    extractor = build_engine(spec, weights, device, engine)

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
) -> None:
    """Serve ``spec``'s token features until interrupted."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_weights(spec, weights, init_seed=init_seed)
    infer = make_infer_fn(spec, resolved, device, engine)
    token = constants.triton_token()
    security = TritonSecurityConfig(access_token=token) if token else TritonSecurityConfig(restricted_endpoints=[])
    config = TritonConfig(
        http_address=host, grpc_address=host, metrics_address=host,
        http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        log_verbose=0, exit_timeout_secs=5,
    )
    with Triton(config=config, security_config=security) as triton:
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
            config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)),
            strict=True,
        )
        log.info("serving %s (%s weights) on %s grpc=%d http=%d device=%s engine=%s", spec.name, resolved.label, host, grpc_port, http_port, device, engine)
        print(f"pfmbench: serving {spec.name} on {host}:{grpc_port} (grpc)", flush=True)
        try:
            triton.serve()
        except KeyboardInterrupt:
            log.info("stopping")
