"""Forward cost of every model in the zoo: parameters, tokens, FLOPs, latency, throughput.

One in-process forward of the token extractor per model (no serving): the number a
user needs to pick a backbone for a budget, and the ceiling the served path is
measured against. FLOPs are counted by ``torch.utils.flop_counter`` on the meta device
(2 x MACs, the whole forward at the given size), so the model-FLOP utilisation (MFU)
on a GPU is ``FLOPs/img x img/s / peak``. On CUDA the forward runs under bf16 autocast,
as the server runs it; on CPU in float32.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.models.builders import build_backbone, family
from harness.models.spec import get_spec

#: Dense bf16 peak (TFLOP/s) by GPU model name, the MFU denominator. Matched as a substring of
#: ``torch.cuda.get_device_name()``, most specific first.
PEAK_BF16_TFLOPS: dict[str, float] = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(device: str) -> float | None:
    """The detected GPU's dense bf16 peak, or None on the CPU or an unknown GPU (MFU is then not reported)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


@dataclass
class ZooPerf:
    model: str
    arch: str
    params_m: float
    size: int
    tokens: int
    gflops_per_image: float
    device: str
    batch: int
    ms_per_batch: float
    images_per_s: float
    tflops: float
    mfu: float | None


def count_flops(name: str, size: int) -> float:
    """FLOPs of one image's forward at ``size`` px, counted on the meta device (nothing allocated)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_spec(name)
    with torch.device("meta"):
        ext = family(spec).extractor(spec, build_backbone(spec))
        counter = FlopCounterMode(display=False)
        with counter:
            ext(torch.empty(1, 3, size, size))
    return float(counter.get_total_flops())


def _median_forward_s(ext: torch.nn.Module, x: torch.Tensor, iters: int, cuda: bool) -> float:
    """Median seconds of one forward after a warm-up (allocations, kernel selection), synchronised on CUDA."""

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            ext(x)
        if cuda:
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure(name: str, device: str = "cpu", batch: int = 1, size: int = 224, iters: int = 5,
            peak_tflops: float | None = None, engine: str = "torch") -> ZooPerf:
    """``engine``: ``torch`` (eager) or ``compile`` (``torch.compile``; max-autotune on CUDA, compiled during the warm-up)."""
    spec = get_spec(name)
    flops = count_flops(name, size)
    with torch.device(device):
        backbone = build_backbone(spec)
    ext = family(spec).extractor(spec, backbone).eval().to(device)
    if engine == "compile":
        ext.forward = torch.compile(ext.forward, mode="max-autotune" if device.startswith("cuda") else None, dynamic=False)  # type: ignore[method-assign]
    elif engine != "torch":
        raise ValueError(f"unknown engine '{engine}' (torch or compile)")
    x = torch.randn(batch, 3, size, size, device=device)
    cuda = device.startswith("cuda")
    sec = _median_forward_s(ext, x, iters, cuda)
    ips = batch / sec
    tflops = flops * ips / 1e12
    h = size // spec.patch_size
    del ext, backbone, x
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return ZooPerf(name, spec.arch, spec.params_m, size, h * h, flops / 1e9, device, batch, sec * 1e3, ips, tflops,
                   tflops / peak_tflops if peak_tflops else None)


def run_zoo_perf(models: list[str], device: str = "cpu", batch: int = 1, size: int = 224, iters: int = 5,
                 peak_tflops: float | None = None, log=print) -> list[ZooPerf]:
    out = []
    for name in models:
        r = measure(name, device, batch, size, iters, peak_tflops)
        out.append(r)
        mfu = f"  MFU {r.mfu:.1%}" if r.mfu is not None else ""
        log(f"{name:14s} {r.params_m:8.1f} M  {r.tokens:4d} tok  {r.gflops_per_image:7.1f} GFLOP  "
            f"{r.ms_per_batch:9.1f} ms/b{batch}  {r.images_per_s:8.1f} img/s{mfu}")
    return out


def write_json(results: list[ZooPerf], path: Path) -> None:
    meta = {"torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1))
