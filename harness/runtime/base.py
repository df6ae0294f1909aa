"""One interface for every place a model can run: ``start``, ``health``, ``infer``, ``stop``.

Runtimes are context managers; leaving the ``with`` block stops the model on every
exit path (success, exception, Ctrl-C), which is how pfmbench guarantees no orphan
server process or container.
"""

from __future__ import annotations

import abc
from types import TracebackType

import numpy as np

from harness.models.spec import ModelSpec
from harness.models.weights import ResolvedWeights


class Runtime(abc.ABC):
    """Where a model runs. Subclasses: ``inprocess``, ``local`` (subprocess), ``docker``."""

    name: str = "runtime"
    #: Requests :func:`~harness.run.segmentation.iter_features` keeps in flight (``infer`` is thread-safe when > 1).
    in_flight: int = 1

    def __init__(self, spec: ModelSpec, weights: ResolvedWeights) -> None:
        self.spec = spec
        self.weights = weights

    @property
    def transfer(self) -> str:
        """How features reach the harness: ``inprocess``, ``shm`` or ``grpc``."""
        return "inprocess"

    @property
    def image_digest(self) -> str | None:
        """The container image digest the model ran in, if any (recorded in every row)."""
        return None

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def health(self) -> bool: ...

    @abc.abstractmethod
    def infer(self, images: np.ndarray, blocks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[B, H, W, 3]`` -> fp16 tokens ``[B, L, h, w, D]`` and cls ``[B, L, D]``."""

    @abc.abstractmethod
    def stop(self) -> None: ...

    def interrupt(self) -> None:
        """Stop for a Ctrl-C: nothing in flight matters, so skip what only a clean shutdown needs.

        Cleanup is still complete (no process, shared memory or container is left); a
        served runtime saves the seconds Triton takes to drain and unload. By default: stop.
        """
        self.stop()

    def __enter__(self) -> Runtime:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.interrupt()
        else:
            self.stop()
