"""No server: the backbone runs in the harness process. The reference for parity and speed."""

from __future__ import annotations

import numpy as np

from harness.builders import TokenExtractor, build_extractor
from harness.runtime.base import Runtime


class InProcessRuntime(Runtime):
    name = "inprocess"

    _extractor: TokenExtractor | None = None

    def start(self) -> None:
        self._extractor = build_extractor(self.spec, self.weights)

    def health(self) -> bool:
        return self._extractor is not None

    def infer(self, images: np.ndarray, blocks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        assert self._extractor is not None, "start() the runtime first"
        return self._extractor.extract(images, blocks)

    def stop(self) -> None:
        self._extractor = None
