"""Throughput of token extraction: in-process against served (shared memory, gRPC), side by side.

For each (model, batch, resolution) the same random uint8 batch goes through every
mode: one warm-up call, then ``iters`` timed calls, one request in flight. Reported:
images/s, latency p50/p90 (ms), output MB/s, and served/in-process ratios computed in
the same run. Results are written as JSON (``make perf``) and printed as a table.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.runtime import InProcessRuntime, LocalRuntime
from harness.runtime.base import Runtime
from harness.spec import get_spec
from harness.weights import ResolvedWeights

MODES = ("inprocess", "shm", "grpc")


@dataclass
class PerfResult:
    model: str
    mode: str
    batch: int
    size: int
    images_per_s: float
    p50_ms: float
    p90_ms: float
    out_mb_per_s: float
    ratio_to_inprocess: float | None = None


def _time(runtime: Runtime, images: np.ndarray, blocks: tuple[int, ...], iters: int) -> tuple[list[float], int]:
    runtime.infer(images, blocks)  # warm-up (allocations, shm registration, autotuning)
    times, nbytes = [], 0
    for _ in range(iters):
        t = time.perf_counter()
        tokens, cls = runtime.infer(images, blocks)
        times.append(time.perf_counter() - t)
        nbytes = tokens.nbytes + cls.nbytes
    return times, nbytes


def _open(mode: str, model: str, device: str | None) -> Runtime:
    spec, weights = get_spec(model), ResolvedWeights.random()
    if mode == "inprocess":
        rt: Runtime = InProcessRuntime(spec, weights, device=device)
    else:
        rt = LocalRuntime(spec, weights, transfer=mode, device=device)  # type: ignore[arg-type]
    return rt


def run_perf(models: list[str], batches: list[int], sizes: list[int], modes: tuple[str, ...] = MODES, iters: int = 3,
             device: str | None = None, log=print) -> list[PerfResult]:
    results: list[PerfResult] = []
    rng = np.random.default_rng(0)
    for model in models:
        spec = get_spec(model)
        for mode in modes:
            with _open(mode, model, device) as rt:
                for size in sizes:
                    for batch in batches:
                        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
                        times, nbytes = _time(rt, images, (spec.depth - 1,), iters)
                        med = float(np.median(times))
                        r = PerfResult(model, mode, batch, size, batch / med, med * 1e3, float(np.percentile(times, 90)) * 1e3, nbytes / med / 1e6)
                        results.append(r)
                        log(f"{model:8s} {mode:9s} b{batch:<3d} {size}px  {r.images_per_s:8.1f} img/s  p50 {r.p50_ms:8.1f} ms  {r.out_mb_per_s:7.1f} MB/s")
    ref = {(r.model, r.batch, r.size): r.images_per_s for r in results if r.mode == "inprocess"}
    for r in results:
        base = ref.get((r.model, r.batch, r.size))
        r.ratio_to_inprocess = round(r.images_per_s / base, 3) if base else None
    return results


def write_json(results: list[PerfResult], path: Path, device: str | None) -> None:
    import torch

    meta = {"host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": device or ("cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1))
