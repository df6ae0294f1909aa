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

from harness.runtime import Runtime, make_runtime
from harness.spec import ModelSpec, get_spec
from harness.weights import resolve_weights


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

    def __enter__(self) -> "TeacherPool":
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
        self.outputs: dict[str, list[TeacherOutput]] = {n: [] for n in pool.runtimes}
        for start in range(0, len(views), batch):
            chunk = views[start:start + batch]
            both = np.concatenate([chunk, chunk[:, :, ::-1]])
            answer = pool.ask(np.ascontiguousarray(both))
            for n, out in answer.items():
                self.outputs[n].append(out)
            if on_batch:
                on_batch(len(chunk))
        self.features = {}
        for n, parts in self.outputs.items():
            k = [len(p.cls) // 2 for p in parts]
            cls0 = np.concatenate([p.cls[:m] for p, m in zip(parts, k)])
            cls1 = np.concatenate([p.cls[m:] for p, m in zip(parts, k)])
            grid0 = np.concatenate([p.grid[:m] for p, m in zip(parts, k)])
            grid1 = np.concatenate([p.grid[m:] for p, m in zip(parts, k)])
            self.features[n] = (cls0, cls1, grid0, grid1)
        del self.outputs

    def lookup(self, index: np.ndarray) -> dict[str, TeacherOutput]:
        """Features of the fixed views of images ``index``, view-major like :class:`~harness.distill.crops.Batch`."""
        out = {}
        for n, (cls0, cls1, grid0, grid1) in self.features.items():
            out[n] = TeacherOutput(np.concatenate([cls0[index], cls1[index]]), np.concatenate([grid0[index], grid1[index]]))
        return out
