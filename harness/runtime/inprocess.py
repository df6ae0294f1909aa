"""No server: the backbone runs in the harness process. The reference for parity and speed."""

from __future__ import annotations

import numpy as np

from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights
from harness.runtime.base import Runtime
from harness.serve.engines import Extracts, build_engine
from harness.util.devices import resolve_device


class InProcessRuntime(Runtime):
    name = "inprocess"

    _extractor: Extracts | None = None

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights, device: str | None = None, engine: str = "torch", dtype: str = "bf16") -> None:
        super().__init__(spec, weights)
        self.device = resolve_device(device)
        self.engine, self.dtype = engine, dtype

    def start(self) -> None:
        self._extractor = build_engine(self.spec, self.weights, self.device, self.engine, self.dtype)

    def health(self) -> bool:
        return self._extractor is not None

    def infer(self, images: np.ndarray, blocks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        assert self._extractor is not None, "start() the runtime first"
        return self._extractor.extract(images, blocks)

    def stop(self) -> None:
        self._extractor = None
