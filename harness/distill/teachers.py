"""Served teachers: each teacher of the zoo in its own runtime, asked concurrently.

A step's global crops go to every teacher at once (one thread per teacher; shared
memory carries the token tensors for served runtimes), and :meth:`TeacherPool.submit`
returns before the answers arrive, so the trainer prepares the next batch's teacher
features while the student trains on this one. With ``teacher_cache`` the global views
are fixed and each image's teacher features are computed once, up front.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from harness.models.spec import ModelSpec, get_spec
from harness.models.weights import resolve_weights
from harness.runtime import Runtime, make_runtime


@dataclass(frozen=True)
class TeacherOutput:
    cls: np.ndarray  # float16 [N, D], final-norm CLS
    grid: np.ndarray  # float16 [N, h, w, D], final-norm patch tokens


class TeacherPool(contextlib.AbstractContextManager):
    """Starts one runtime per teacher (concurrently) and asks them all for each batch of global crops."""

    def __init__(self, names: tuple[str, ...], weights: str = "random", runtime: str = "local") -> None:
        self.specs: dict[str, ModelSpec] = {n: get_spec(n) for n in names}
        self.weights = {n: resolve_weights(spec, weights) for n, spec in self.specs.items()}
        self.runtime_name = runtime
        self.runtimes: dict[str, Runtime] = {}
        self._stack = contextlib.ExitStack()
        self._pool = ThreadPoolExecutor(max_workers=2 * len(names), thread_name_prefix="teacher")
        self._gather = ThreadPoolExecutor(max_workers=2, thread_name_prefix="teacher-batch")
        self.request_s: list[float] = []  # wall time of each batch through every teacher

    def __enter__(self) -> TeacherPool:
        made = {n: make_runtime(self.runtime_name, spec, self.weights[n]) for n, spec in self.specs.items()}
        starts = {n: self._pool.submit(rt.__enter__) for n, rt in made.items()}  # servers start side by side
        failure: BaseException | None = None
        for n, fut in starts.items():
            try:
                self.runtimes[n] = fut.result()
                self._stack.push(made[n].__exit__)
            except BaseException as exc:  # keep collecting: every started server must be stopped
                failure = failure or exc
        if failure is not None:
            self.__exit__(None, None, None)
            raise failure
        return self

    def __exit__(self, *exc: object) -> None:
        self._gather.shutdown(wait=True, cancel_futures=True)
        self._stack.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def transfer(self) -> str:
        return ",".join(f"{n}:{rt.transfer}" for n, rt in self.runtimes.items())

    def _ask(self, name: str, crops: np.ndarray) -> TeacherOutput:
        spec = self.specs[name]
        tokens, cls = self.runtimes[name].infer(crops, (spec.depth - 1,))
        return TeacherOutput(cls[:, 0], tokens[:, 0])

    def submit(self, crops: np.ndarray) -> Future:
        """Ask every teacher for ``crops`` at once; the future holds ``{name: TeacherOutput}``."""

        def gather() -> dict[str, TeacherOutput]:
            started = time.perf_counter()
            futures = {n: self._pool.submit(self._ask, n, crops) for n in self.runtimes}
            out = {n: f.result() for n, f in futures.items()}
            self.request_s.append(time.perf_counter() - started)
            return out

        return self._gather.submit(gather)

    def ask(self, crops: np.ndarray) -> dict[str, TeacherOutput]:
        return self.submit(crops).result()


class TeacherCache:
    """Teacher features of the fixed global views (the image resized, and its mirror), computed once."""

    def __init__(self, pool: TeacherPool, views: np.ndarray, batch: int = 16, on_batch=None) -> None:
        """``views``: uint8 ``[N, G, G, 3]``, one fixed view per image; the mirror is asked for too."""
        chunks: dict[str, list[TeacherOutput]] = {n: [] for n in pool.runtimes}
        for start in range(0, len(views), batch):
            chunk = views[start:start + batch]
            answer = pool.ask(np.ascontiguousarray(np.concatenate([chunk, chunk[:, :, ::-1]])))
            for n, out in answer.items():  # [2b, ...] -> [2, b, ...]: view 0, then the mirror
                chunks[n].append(TeacherOutput(out.cls.reshape(2, len(chunk), *out.cls.shape[1:]),
                                               out.grid.reshape(2, len(chunk), *out.grid.shape[1:])))
            if on_batch:
                on_batch(len(chunk))
        #: per teacher, ``[2, N, ...]`` arrays: the two views of every image
        self.features = {n: TeacherOutput(np.concatenate([c.cls for c in parts], axis=1), np.concatenate([c.grid for c in parts], axis=1))
                         for n, parts in chunks.items()}

    def lookup(self, index: np.ndarray) -> dict[str, TeacherOutput]:
        """Features of the fixed views of images ``index``, view-major like :class:`~harness.distill.crops.Batch`."""
        return {n: TeacherOutput(f.cls[:, index].reshape(-1, *f.cls.shape[2:]), f.grid[:, index].reshape(-1, *f.grid.shape[2:]))
                for n, f in self.features.items()}
