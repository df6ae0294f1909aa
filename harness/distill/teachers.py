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

from harness.client.feature_cache import FeatureCache, FeatureKey, host_environment, on_device, pixels_hash
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

    def environment(self, name: str) -> str | None:
        """What computes ``name``'s features: its image digest in a container, this host's torch and harness otherwise; and the device."""
        from harness.util.devices import resolve_device

        device = resolve_device(None)  # the teachers' servers are started without a device: each takes this machine's auto
        if self.runtime_name == "docker":
            from harness.run.plan import image_digest

            digest = image_digest("docker", self.specs[name], None)
            return None if digest is None else on_device(digest, device)
        return on_device(host_environment(), device)

    def submit(self, crops: np.ndarray, names: tuple[str, ...] | None = None) -> Future:
        """Ask every teacher (or those ``names``) for ``crops`` at once; the future holds ``{name: TeacherOutput}``."""

        def gather() -> dict[str, TeacherOutput]:
            started = time.perf_counter()
            futures = {n: self._pool.submit(self._ask, n, crops) for n in (names or tuple(self.runtimes))}
            out = {n: f.result() for n, f in futures.items()}
            self.request_s.append(time.perf_counter() - started)
            return out

        return self._gather.submit(gather)

    def ask(self, crops: np.ndarray, names: tuple[str, ...] | None = None) -> dict[str, TeacherOutput]:
        return self.submit(crops, names).result()


class TeacherCache:
    """Teacher features of the fixed global views (the image resized, and its mirror), computed once per image, ever.

    With a :class:`~harness.client.feature_cache.FeatureCache` (``store``) the features
    of each teacher live on disk under a key of everything they depend on (the teacher,
    its weights and environment, the exact pixels of the views): a resumed or repeated run
    reads them instead of asking the teachers again.
    """

    def __init__(self, pool: TeacherPool, views: np.ndarray, batch: int = 16, on_batch=None,
                 store: FeatureCache | None = None, dataset: str = "") -> None:
        """``views``: uint8 ``[N, G, G, 3]``, one fixed view per image; the mirror is asked for too."""
        keys = teacher_keys(pool, views, dataset) if store is not None else {}
        #: per teacher, ``[2, N, ...]`` arrays: the two views of every image
        self.features: dict[str, TeacherOutput] = {}
        for name, (cls_key, grid_key) in keys.items():
            cls, grid = store.get(cls_key), store.get(grid_key)  # type: ignore[union-attr]
            if cls is not None and grid is not None:
                self.features[name] = TeacherOutput(np.asarray(cls), np.asarray(grid))
        missing = tuple(n for n in pool.runtimes if n not in self.features)
        #: teachers whose features were read from the store rather than computed
        self.from_store = tuple(n for n in pool.runtimes if n in self.features)
        if missing:
            computed = _ask_views(pool, views, missing, batch, on_batch)
            for name, out in computed.items():
                if store is not None:
                    cls_key, grid_key = keys[name]
                    store.put(cls_key, [out.cls])
                    store.put(grid_key, [out.grid])
            self.features.update(computed)
        elif on_batch:
            on_batch(len(views))

    def lookup(self, index: np.ndarray) -> dict[str, TeacherOutput]:
        """Features of the fixed views of images ``index``, view-major like :class:`~harness.distill.crops.Batch`."""
        return {n: TeacherOutput(f.cls[:, index].reshape(-1, *f.cls.shape[2:]), f.grid[:, index].reshape(-1, *f.grid.shape[2:]))
                for n, f in self.features.items()}


def _ask_views(pool: TeacherPool, views: np.ndarray, names: tuple[str, ...], batch: int, on_batch) -> dict[str, TeacherOutput]:
    chunks: dict[str, list[TeacherOutput]] = {n: [] for n in names}
    for start in range(0, len(views), batch):
        chunk = views[start:start + batch]
        answer = pool.ask(np.ascontiguousarray(np.concatenate([chunk, chunk[:, :, ::-1]])), names)
        for n, out in answer.items():  # [2b, ...] -> [2, b, ...]: view 0, then the mirror
            chunks[n].append(TeacherOutput(out.cls.reshape(2, len(chunk), *out.cls.shape[1:]),
                                           out.grid.reshape(2, len(chunk), *out.grid.shape[1:])))
        if on_batch:
            on_batch(len(chunk))
    return {n: TeacherOutput(np.concatenate([c.cls for c in parts], axis=1), np.concatenate([c.grid for c in parts], axis=1))
            for n, parts in chunks.items()}


def teacher_keys(pool: TeacherPool, views: np.ndarray, dataset: str) -> dict[str, tuple[FeatureKey, FeatureKey]]:
    """Per teacher, the feature-cache keys of its CLS and grid features of ``views`` (and their mirrors).

    A teacher in a container is keyed by its image digest; one without a known digest is
    not cached (its code is unknown), like a segmentation run against ``--endpoint``.
    """
    pixels = pixels_hash([views])
    keys = {}
    for name, spec in pool.specs.items():
        environment = pool.environment(name)
        if environment is None:
            continue
        common = (spec.name, spec.spec_hash(), environment, pool.weights[name].identity, dataset, "")
        keys[name] = tuple(FeatureKey(*common, f"distill-global-views:{part}", pixels, int(views.shape[1]), (spec.depth - 1,))
                           for part in ("cls", "grid"))
    return keys  # type: ignore[return-value]
