"""The wire contract of the ``features`` Triton model, shared by server and client.

Inputs: ``images`` uint8 ``[B, H, W, 3]`` (H, W multiples of the patch size; the server
normalises with the spec's mean/std) and ``blocks`` int32 ``[B, L]`` (0-based block
indices, the same for every image of a request).
Outputs: ``tokens`` fp16 ``[B, L, H/p, W/p, D]`` and ``cls`` fp16 ``[B, L, D]``.
"""

from __future__ import annotations

import numpy as np

from harness.models.spec import ModelSpec

IMAGES, BLOCKS, TOKENS, CLS = "images", "blocks", "tokens", "cls"
#: The server's largest request: a client on a large GPU sends up to this many images at once (:func:`~harness.util.devices.extraction_batch`).
MAX_BATCH = 256


def output_shapes(spec: ModelSpec, batch: int, height: int, width: int, n_blocks: int) -> dict[str, tuple[int, ...]]:
    h, w = spec.grid(height, width)
    return {TOKENS: (batch, n_blocks, h, w, spec.embed_dim), CLS: (batch, n_blocks, spec.embed_dim)}


def nbytes(shape: tuple[int, ...], dtype: type = np.float16) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize
