"""``make gpu-check``: the GPU figures of one machine in one prepared run, one JSON and one table.

Four sections, each cell measured on its own so one failure (an engine that does not
install, an out-of-memory) is recorded in that cell and never aborts the rest:

1. forward throughput and MFU of ViT-B/16, ViT-L/16, ViT-H/14 and ViT-g/14 at 224 px,
   eager against ``torch.compile`` (bf16 autocast; MFU against the detected GPU's dense
   bf16 peak, :data:`~harness.perf.zoo.PEAK_BF16_TFLOPS`);
2. served / in-process for ViT-L at batch 64 over system shared memory and gRPC;
3. one frozen ``bench`` row of phikon on nuclei-sample end to end, with the GPU's
   utilisation sampled by NVML every 0.1 s (its busy share is the pipeline's figure);
4. one LoRA optimiser step of ViT-L.

It is sized to finish in about 8 minutes on one H100-class GPU; the compile cells run last
and the JSON is rewritten after every cell. ``device="cpu"`` runs the same plan at toy
sizes: how the tests check the script before a GPU is lent to it.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import describe
from harness.util.devices import gpu_index

#: The architectures the issue's targets name, by a model of the zoo that has each.
FORWARD_MODELS = {"ViT-B/16": "phikon", "ViT-L/16": "uni", "ViT-H/14": "uni2_h", "ViT-g/14": "h_optimus_0"}
ENGINES = ("torch", "compile")
#: Targets (img/s at 224 px, in-process) the issue sets on an H100-class GPU.
TARGETS = {"ViT-L/16": 5000.0, "ViT-H/14": 1700.0, "ViT-g/14": 900.0}

Log = Callable[[str], None]


@dataclass
class Plan:
    """What one gpu-check measures; :meth:`toy` is the CPU rehearsal of the same plan."""

    device: str
    forward_models: dict[str, str] = field(default_factory=lambda: dict(FORWARD_MODELS))
    engines: tuple[str, ...] = ENGINES
    forward_batch: int = 64
    forward_iters: int = 10
    size: int = 224
    served_model: str = "uni"
    served_batch: int = 64
    served_modes: tuple[str, ...] = ("inprocess", "shm", "grpc")
    served_iters: int = 5
    bench_epochs: int = 10
    lora_model: str = "uni"
    lora_batch: int = 16

    @classmethod
    def toy(cls, device: str = "cpu") -> Plan:
        return cls(device, forward_models={"ViT-B/16": "phikon"}, engines=("torch",), forward_batch=2, forward_iters=1, size=64,
                   served_model="phikon", served_batch=2, served_modes=("inprocess", "shm"), served_iters=1, bench_epochs=1,
                   lora_model="phikon", lora_batch=1)


def _cell(section: str, what: dict[str, Any], measure: Callable[[], dict[str, Any]], log: Log) -> dict[str, Any]:
    """One measurement: its figures, or the error that stopped it (the run goes on)."""
    started = time.perf_counter()
    try:
        figures = measure()
        cell = {"section": section, **what, **figures, "error": None}
    except Exception as exc:  # recorded in the cell; the other cells still run
        cell = {"section": section, **what, "error": describe(exc),
                "traceback": traceback.format_exc(limit=4)}
    cell["seconds"] = round(time.perf_counter() - started, 1)
    log(f"{section}: {what} -> {cell.get('error') or {k: v for k, v in cell.items() if k not in ('section', 'seconds', 'error', *what)}}")
    return cell


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class UtilisationSampler:
    """Samples the GPU's utilisation (NVML) on a thread while a block runs: mean and busy share (>= 50%)."""

    def __init__(self, device: str, period_s: float = 0.1) -> None:
        self.device, self.period_s, self.samples = device, period_s, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilisationSampler:
        from harness.util.devices import gpu_index

        index = gpu_index(self.device)
        if index is None:
            return self
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)

        def sample() -> None:
            while not self._stop.wait(self.period_s):
                self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

        self._thread = threading.Thread(target=sample, name="gpu-utilisation", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            import pynvml

            pynvml.nvmlShutdown()

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_busy_share": None}
        return {"gpu_util_mean": round(statistics.fmean(self.samples), 1),
                "gpu_busy_share": round(sum(s >= 50 for s in self.samples) / len(self.samples), 3)}


def _forward(plan: Plan, model: str, engine: str) -> dict[str, Any]:
    from harness.perf.zoo import measure, peak_tflops

    r = measure(model, plan.device, plan.forward_batch, plan.size, plan.forward_iters, peak_tflops(plan.device), engine=engine)
    _free_gpu()
    if (index := gpu_index(plan.device)) is not None:  # what --engine auto reads: compile where it measured faster on this GPU model
        import torch

        from harness.perf.engine_choice import record

        record(torch.cuda.get_device_name(index), model, engine, r.images_per_s)
    return {"images_per_s": round(r.images_per_s, 1), "ms_per_batch": round(r.ms_per_batch, 2), "tflops": round(r.tflops, 1),
            "mfu": None if r.mfu is None else round(r.mfu, 4)}


def _served(plan: Plan) -> list[dict[str, Any]]:
    from harness.perf.transfer import run_perf

    report = run_perf([plan.served_model], [plan.served_batch], [plan.size], plan.served_modes, plan.served_iters, plan.device, log=lambda m: None)
    _free_gpu()
    return [{"mode": r.mode, "images_per_s": round(r.images_per_s, 1), "images_per_s_min": round(r.images_per_s_min, 1),
             "images_per_s_max": round(r.images_per_s_max, 1), "ratio_to_inprocess": r.ratio_to_inprocess, "ratio_min": r.ratio_min,
             "ratio_max": r.ratio_max, "max_abs_diff": r.max_abs_diff, "error": r.error} for r in report.transfer]


def _bench_row(plan: Plan, results_dir: Path) -> dict[str, Any]:
    from harness.run.lifecycle import execute
    from harness.run.plan import resolve_config

    cfg, _ = resolve_config("segmentation", "phikon", "nuclei-sample", runtime="local", weights="random", epochs=plan.bench_epochs, seed=0)
    with UtilisationSampler(plan.device) as sampler:
        started = time.perf_counter()
        row = execute(cfg, results_dir=results_dir, device=plan.device, feature_cache=False)
        wall = time.perf_counter() - started
    return {"wall_s": round(wall, 1), "mDice": row.mDice, "device": row.device, "gpu_model": row.gpu_model, "precision": row.precision,
            **sampler.summary()}


def _lora_step(plan: Plan) -> dict[str, Any]:
    from harness.perf.train import measure

    r = measure(plan.lora_model, "lora", plan.device, plan.size, plan.lora_batch, steps=3)
    _free_gpu()
    return {"step_s": round(r.step_s, 4), "images_per_s": round(r.images_per_s, 1), "trainable_params": r.trainable_params, "peak_mem_mb": r.peak_mem_mb}


def run_gpu_check(plan: Plan, workdir: Path, log: Log = print, out: Path | None = None) -> dict[str, Any]:
    """Every cell of ``plan``; returns the report (meta + cells). Nothing here raises for a failed cell.

    The cheap, certain cells run first (eager forwards, served, the row, LoRA) and the
    ``torch.compile`` ones last, since compiling is the part whose time is hardest to
    foresee. With ``out`` the report is rewritten after every cell, so a check cut short
    (a device lease that ends) still leaves every cell it finished.
    """
    import torch

    from harness.perf.zoo import peak_tflops
    from harness.util.devices import device_facts

    report: dict[str, Any] = {"meta": {**device_facts(plan.device), "peak_bf16_tflops": peak_tflops(plan.device),
                                       "torch_threads": torch.get_num_threads(), "targets_img_s": TARGETS}, "cells": []}

    def run(section: str, what: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> None:
        report["cells"].append(_cell(section, what, measure, log))
        if out is not None:
            write_report(report, out)

    def forwards(engines: tuple[str, ...]) -> None:
        for arch, model in plan.forward_models.items():
            for engine in engines:
                what = {"arch": arch, "model": model, "engine": engine, "batch": plan.forward_batch, "size": plan.size}
                run("forward", what, functools.partial(_forward, plan, model, engine))

    forwards(tuple(e for e in plan.engines if e != "compile"))
    run("served", {"model": plan.served_model, "batch": plan.served_batch, "size": plan.size}, lambda: {"modes": _served(plan)})
    run("bench", {"model": "phikon", "dataset": "nuclei-sample", "strategy": "frozen", "epochs": plan.bench_epochs},
        lambda: _bench_row(plan, workdir / "results"))
    run("lora", {"model": plan.lora_model, "batch": plan.lora_batch, "size": plan.size}, lambda: _lora_step(plan))
    forwards(tuple(e for e in plan.engines if e == "compile"))
    return report


def write_report(report: dict[str, Any], path: Path) -> None:
    from harness.util.atomic import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report)


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(section, what, result) lines for the table printed after the JSON is written."""
    rows = []
    for c in report["cells"]:
        if c["error"]:
            rows.append((c["section"], c.get("arch") or c.get("model", ""), f"error: {c['error']}"))
        elif c["section"] == "forward":
            mfu = f", MFU {c['mfu']:.1%}" if c["mfu"] is not None else ""
            rows.append(("forward", f"{c['arch']} {c['engine']} b{c['batch']}", f"{c['images_per_s']:.0f} img/s{mfu}"))
        elif c["section"] == "served":
            rows += [("served", f"{c['model']} {m['mode']} b{c['batch']}",
                      f"error: {m['error']}" if m["error"] else
                      f"{m['images_per_s']:.0f} img/s, {m['ratio_to_inprocess']} ({m['ratio_min']}-{m['ratio_max']}) of in-process")
                     for m in c["modes"]]
        elif c["section"] == "bench":
            busy = "" if c["gpu_busy_share"] is None else f", GPU busy {c['gpu_busy_share']:.0%} (mean {c['gpu_util_mean']}%)"
            rows.append(("bench", f"phikon nuclei-sample frozen {c['epochs']} ep", f"{c['wall_s']} s end to end on {c['device']}{busy}"))
        elif c["section"] == "lora":
            rows.append(("lora", f"{c['model']} b{c['batch']}", f"{c['step_s']:.3f} s/step, {c['peak_mem_mb']:.0f} MB"))
    return rows

