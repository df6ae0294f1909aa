"""Training cost per strategy: trainable parameters, seconds per optimiser step, peak memory (``make perf-train``).

One optimiser step = forward, Dice loss, backward, clipping, Adam, on a batch of random
uint8 images at the given size, exactly as the training job does it (fp16 autocast with
a GradScaler on a GPU). The first steps warm up and are not timed. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and the process's peak RSS on CPU (which
only grows, so CPU figures are upper bounds for the strategies measured later).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.adapt.strategies import build_segmenter, trainable_parameters
from harness.models.builders import build_extractor
from harness.models.spec import get_spec
from harness.results import provenance
from harness.train.adapted import train_step


@dataclass
class TrainPerf:
    model: str
    strategy: str
    device: str
    size: int
    batch: int
    trainable_params: int
    step_s: float  # median
    images_per_s: float
    peak_mem_mb: float
    peak_kind: str  # "cuda allocated" | "process RSS"


def measure(model: str, strategy: str, device: str = "cpu", size: int = 224, batch: int = 8, steps: int = 3, warmup: int = 1,
            num_classes: int = 4, impl: str = "densebench") -> TrainPerf:
    spec = get_spec(model)
    dev = torch.device(device)
    torch.manual_seed(0)
    seg = build_segmenter(build_extractor(spec), strategy, "transunet", num_classes, (spec.depth - 1,), impl=impl,  # type: ignore[arg-type]
                          alpha=1.0 if impl == "densebench" else 16.0).to(dev)
    params = [p for p in seg.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=dev.type == "cuda")
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=dev)
    target = torch.randint(0, num_classes, (batch, size, size), device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    seg.train()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        train_step(seg, opt, scaler, params, images, target, grad_clip=5.0)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda allocated"
    else:
        peak, kind = provenance.peak_rss_mb(), "process RSS"
    return TrainPerf(model, strategy, device, size, batch, trainable_parameters(seg), step, batch / step, round(peak, 1), kind)


def run_train_perf(models: list[str], strategies: list[str], device: str, size: int, batch: int, steps: int,
                   log: Callable[[str], None] = print) -> list[TrainPerf]:
    out = []
    for m in models:
        for s in strategies:
            r = measure(m, s, device, size, batch, steps)
            log(f"{m} {s}: {r.trainable_params:,} trainable, {r.step_s:.3f} s/step, peak {r.peak_mem_mb:.0f} MB ({r.peak_kind})")
            out.append(r)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return out


def write_json(results: list[TrainPerf], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"hardware": provenance.hardware(), "torch": torch.__version__, "results": [asdict(r) for r in results]}, indent=1))
