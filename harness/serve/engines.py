"""What runs a model's forward: eager PyTorch (the reference), ``torch.compile``, or onnxruntime.

Each gives ``extract(images, blocks) -> (tokens, cls)`` on numpy arrays, so the server and
the in-process runtime take any of them (``--engine``). Runs use ``torch``; the others
are there to be measured against it (``pfmbench perf --modes compile,onnx,onnx-shm``).
``compile`` wraps the extractor's forward in ``torch.compile`` (Inductor; on CUDA in
``max-autotune`` mode, which also captures CUDA graphs); it recompiles once per new
input shape, so its first call per (batch, size) is slow and the warm-up absorbs it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from harness.config import ENGINES
from harness.models.builders import build_extractor
from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights
from harness.util.devices import DEFAULT_EXTRACT_DTYPE, check_dtype


class Extracts(Protocol):
    def extract(self, images: np.ndarray, blocks: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]: ...


def build_engine(spec: ModelSpec, weights: ResolvedWeights, device: str, engine: str = "torch", dtype: str = DEFAULT_EXTRACT_DTYPE) -> Extracts:
    """The model with ``weights`` behind ``engine``, on ``device``; on a GPU, eager and compiled torch autocast to ``dtype``.

    (onnxruntime on a GPU runs its own fp16: TensorRT's, or the CUDA provider's.)
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine '{engine}' (one of {', '.join(ENGINES)})")
    import torch

    extractor = build_extractor(spec, weights)
    extractor.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[check_dtype(dtype)]
    if engine == "onnx":
        from harness.serve.onnx import OnnxExtractor

        return OnnxExtractor(extractor, weights, device)
    extractor = extractor.to(device)
    if engine == "compile":
        mode = "max-autotune" if device.startswith("cuda") else None
        extractor.forward = torch.compile(extractor.forward, mode=mode, dynamic=False)  # type: ignore[method-assign]
    return extractor
