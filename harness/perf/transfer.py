"""The performance suite behind ``make perf``: what serving, caching and streaming cost.

Three measurements, each written into one JSON document and printed as a table:

1. **Transfer** (:func:`run_perf`): for each (model, batch, resolution), the same random
   uint8 batch through every mode: in-process, a local Triton server with system shared
   memory, gRPC, HTTP, the docker runtime (shared memory into a container), the extractor
   under ``torch.compile`` (``compile``), and the model's ONNX export run by onnxruntime,
   in-process (``onnx``) and served (``onnx-shm``).
   The modes are interleaved (A B C A B C ...) over at least three rounds after a
   warm-up, one request in flight, and a local server computes with the harness's torch
   thread count. Reported per cell: the median images/s with its spread over rounds,
   latency p50/p90/p99, output MB/s, the median ratio to in-process within a round with
   its spread, and the largest absolute difference from the in-process tokens (parity).
   A mode that fails records its error in its cells; the other cells still run.
2. **Cache** (:func:`cache_epoch_perf`): one decoder epoch of the ``frozen`` strategy with
   its token grids read from the feature cache, against the same epoch with the grids
   extracted online (what the epoch would cost without a cache).
3. **Streaming** (:func:`stream_rss_perf`): extract many large images through a local
   server straight into the cache, sampling the harness's RSS: it must stay flat however
   many images go through, because only one batch is ever in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from harness.errors import ConfigError, describe
from harness.models.spec import get_spec
from harness.models.weights import ResolvedWeights
from harness.runtime import InProcessRuntime, LocalRuntime
from harness.runtime.base import Runtime

T = TypeVar("T")
MODES = ("inprocess", "shm", "grpc", "http", "docker", "compile", "onnx", "onnx-shm")
Log = Callable[[str], None]


#: ``pfmbench perf --gpu``: the large ViTs whose transfer cost matters on a GPU.
GPU_GRID = {"models": "uni,h_optimus_0,uni2_h", "batches": "32,64", "modes": "inprocess,shm", "device": "cuda"}


@dataclass
class PerfResult:
    """One (model, mode, batch, size) cell: medians over interleaved rounds, with their spread; or the error that stopped it."""

    model: str
    mode: str
    batch: int
    size: int
    images_per_s: float  # median over rounds (0 when the cell failed)
    p50_ms: float  # over every timed call of every round
    p90_ms: float
    p99_ms: float
    out_mb_per_s: float  # output bytes per call / p50
    rounds: int = 0
    images_per_s_min: float = 0.0  # the spread of the per-round rates
    images_per_s_max: float = 0.0
    ratio_to_inprocess: float | None = None  # median over rounds of (this mode's rate / in-process's rate in the same round)
    ratio_min: float | None = None
    ratio_max: float | None = None
    max_abs_diff: float | None = None  # against the in-process (eager torch) tokens of the same batch
    error: str | None = None  # why the cell has no figures; the other cells still ran


@dataclass
class PerfReport:
    """Everything one ``pfmbench perf`` run measured; ``skipped`` says what it could not and why."""

    transfer: list[PerfResult] = field(default_factory=list)
    cache: list[dict] | None = None
    stream: dict | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[PerfResult]:
        return [r for r in self.transfer if r.error]


def section_or_error(measure: Callable[[], T]) -> T | dict[str, str]:
    """A whole section's result, or ``{"error": ...}``: the report is written whatever failed."""
    try:
        return measure()
    except Exception as exc:
        return {"error": describe(exc)}


def open_runtime(mode: str, model: str, device: str | None) -> Runtime:
    """The runtime a perf mode measures (random weights: throughput does not depend on them).

    A local server computes with as many torch threads as this process, so a served mode
    and in-process compare the same compute, not two thread settings.
    """
    import torch

    spec, weights, threads = get_spec(model), ResolvedWeights.random(), torch.get_num_threads()
    if mode in ("inprocess", "compile", "onnx"):
        return InProcessRuntime(spec, weights, device=device, engine="torch" if mode == "inprocess" else mode)
    if mode == "docker":
        from harness.runtime.docker import DockerRuntime

        return DockerRuntime(spec, weights, transfer="shm", device=device)
    if mode == "onnx-shm":
        return LocalRuntime(spec, weights, transfer="shm", device=device, engine="onnx", threads=threads)
    return LocalRuntime(spec, weights, transfer=mode, device=device, threads=threads)  # type: ignore[arg-type]


def _mode_unavailable(mode: str, model: str, device: str | None) -> str | None:
    """Why ``mode`` cannot be measured here (None: it can). Perf never builds or pulls an image."""
    if mode != "docker":
        return None
    from harness.images.docker import docker_client, local_tag
    from harness.runtime import docker_available

    ok, why = docker_available()
    if not ok:
        return f"docker: {why}"
    try:
        docker_client().images.get(local_tag(model))
    except Exception:
        return f"docker {model}: {local_tag(model)} is not built (pfmbench images build {model})"
    return None


def check_modes(modes: tuple[str, ...]) -> None:
    """A one-line error for an unknown mode, before anything is started."""
    for mode in modes:
        if mode not in MODES:
            raise ConfigError(f"unknown perf mode '{mode}'", f"use one or more of {', '.join(MODES)}")


@dataclass
class _Cell:
    """What one (mode, batch, size) gathers over the rounds."""

    rates: list[float] = field(default_factory=list)  # images/s of each round
    calls_s: list[float] = field(default_factory=list)
    nbytes: int = 0
    tokens: np.ndarray | None = None
    error: str | None = None


def run_perf(models: list[str], batches: list[int], sizes: list[int], modes: tuple[str, ...] = MODES, iters: int = 1,
             device: str | None = None, log: Log = print, report: PerfReport | None = None, rounds: int = 3) -> PerfReport:
    """Throughput of every mode on the same inputs, the modes interleaved (A B C A B C ...) over ``rounds`` rounds.

    Every mode of a model is open at once, so each round times every mode back to back
    (``iters`` calls each, after one warm-up call): a slow patch of the machine slows every
    mode alike, and each ratio to in-process is taken within a round. A mode that fails
    to start or to answer records its error in its cells and the rest go on; a mode that
    cannot run here at all (docker without a daemon or image) is listed in ``skipped``.
    """
    report = report or PerfReport()
    rounds = max(3, rounds)
    check_modes(modes)
    for model in models:
        blocks = (get_spec(model).depth - 1,)
        with contextlib.ExitStack() as stack:
            runtimes: dict[str, Runtime] = {}
            failed_to_open: dict[str, str] = {}
            for mode in modes:
                if (why := _mode_unavailable(mode, model, device)) is not None:
                    if why not in report.skipped:
                        report.skipped.append(why)
                        log(f"skipped {why}")
                    continue
                try:
                    runtimes[mode] = stack.enter_context(open_runtime(mode, model, device))
                except Exception as exc:
                    failed_to_open[mode] = describe(exc)
                    log(f"{model} {mode}: could not start: {failed_to_open[mode]}")
            for size in sizes:
                for batch in batches:
                    images = np.random.default_rng(batch * 10_000 + size).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
                    cells = {mode: _Cell(error=failed_to_open.get(mode)) for mode in (*runtimes, *failed_to_open)}
                    for r in range(rounds + 1):  # round 0 is the warm-up (allocations, shm registration, export, autotuning)
                        for mode, rt in runtimes.items():
                            cell = cells[mode]
                            if cell.error:
                                continue
                            try:
                                started = time.perf_counter()
                                for _ in range(iters if r else 1):
                                    t = time.perf_counter()
                                    tokens, cls = rt.infer(images, blocks)
                                    if r:
                                        cell.calls_s.append(time.perf_counter() - t)
                                if r:
                                    cell.rates.append(batch * iters / (time.perf_counter() - started))
                                cell.tokens, cell.nbytes = tokens, tokens.nbytes + cls.nbytes
                            except Exception as exc:
                                cell.error = describe(exc)
                    report.transfer += _cell_results(model, batch, size, cells, log)
    return report


def _cell_results(model: str, batch: int, size: int, cells: dict[str, _Cell], log: Log) -> list[PerfResult]:
    base = cells.get("inprocess")
    out = []
    for mode, cell in cells.items():
        if cell.error:
            out.append(PerfResult(model, mode, batch, size, 0.0, 0.0, 0.0, 0.0, 0.0, error=cell.error))
            log(f"{model:8s} {mode:9s} b{batch:<3d} {size}px  error: {cell.error}")
            continue
        p50, p90, p99 = (float(np.percentile(cell.calls_s, q)) * 1e3 for q in (50, 90, 99))
        res = PerfResult(model, mode, batch, size, float(np.median(cell.rates)), p50, p90, p99, cell.nbytes / (p50 / 1e3) / 1e6,
                         rounds=len(cell.rates), images_per_s_min=min(cell.rates), images_per_s_max=max(cell.rates))
        if base is not None and not base.error and base.tokens is not None and cell.tokens is not None:
            ratios = [a / b for a, b in zip(cell.rates, base.rates)]
            res.ratio_to_inprocess, res.ratio_min, res.ratio_max = (round(v, 3) for v in (float(np.median(ratios)), min(ratios), max(ratios)))
            res.max_abs_diff = float(np.abs(cell.tokens.astype(np.float32) - base.tokens.astype(np.float32)).max())
        spread = "" if res.ratio_to_inprocess is None else f"  {res.ratio_to_inprocess:.2f}x in-process ({res.ratio_min:.2f}-{res.ratio_max:.2f})"
        log(f"{model:8s} {mode:9s} b{batch:<3d} {size}px  {res.images_per_s:8.1f} img/s ({res.images_per_s_min:.1f}-{res.images_per_s_max:.1f})"
            f"  p50 {p50:8.1f} ms{spread}")
        out.append(res)
    return out


def cache_epoch_perf(model: str = "phikon", dataset: str = "nuclei-sample", size: int | None = None, device: str | None = None,
                     repeats: int = 1, decoders: tuple[str, ...] = ("linear", "transunet"), log: Log = print) -> list[dict]:
    """One frozen decoder epoch from the feature cache vs. the same epoch extracting its features online, per decoder.

    Online = the train split's token grids through the (in-process, i.e. fastest) runtime
    plus the decoder's training steps; cached = the decoder's steps reading a memory map.
    The median of ``repeats`` epochs of each is reported, and their ratio. The decoder's
    own cost is in both, so the ratio is largest for the light ``linear`` head and
    smallest for the reference's ``transunet`` decoder.
    """
    import torch

    from harness.adapt.decoders import build_decoder
    from harness.client.feature_cache import FeatureCache, FeatureKey, host_environment, pixels_hash
    from harness.data.cards import get_card
    from harness.run.plan import resolve_config
    from harness.run.scoring import load_splits
    from harness.run.segmentation import iter_features
    from harness.train.frozen import as_tensor, dice_loss, epoch_batches

    spec, card = get_spec(model), get_card(dataset)
    size = size or card.input_size.for_patch(spec.patch_size)
    data, _ = load_splits(card, size, None)
    train = data["train"]
    cfg, _ = resolve_config("segmentation", model, dataset, runtime="inprocess")  # the densebench preset's decoder, batch and LR
    blocks = (spec.depth - 1,)

    with tempfile.TemporaryDirectory(prefix="pfmbench-perf-cache-") as tmp, InProcessRuntime(spec, ResolvedWeights.random(), device=device) as rt:
        cache = FeatureCache(Path(tmp))
        key = FeatureKey(spec.name, spec.spec_hash(), host_environment(), "random:0", card.name, card.card_hash(), "train",
                         pixels_hash([train.images]), size, blocks)
        t = time.perf_counter()
        cached = cache.put(key, iter_features(rt, train.images, blocks, batch=cfg.batch_size))
        fill_s = time.perf_counter() - t
        results = []
        for name in decoders:
            torch.manual_seed(0)
            decoder = build_decoder(name, spec.embed_dim, len(blocks), card.num_classes, spec.patch_size)
            opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr)

            def epoch(online: bool, decoder: torch.nn.Module = decoder, opt: torch.optim.Optimizer = opt) -> float:
                gen = torch.Generator().manual_seed(0)
                t0 = time.perf_counter()
                for idx in epoch_batches(len(train.images), cfg.batch_size, gen):
                    tokens = rt.infer(train.images[idx], blocks)[0] if online else cached[idx]
                    loss = dice_loss(decoder(as_tensor(tokens)), torch.from_numpy(train.masks[idx]).long(), card.ignore_index)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                return time.perf_counter() - t0

            epoch(False)  # warm-up
            online_s = float(np.median([epoch(True) for _ in range(repeats)]))
            cached_s = float(np.median([epoch(False) for _ in range(repeats)]))
            res = {"model": model, "dataset": dataset, "size": size, "images": len(train.images), "batch": cfg.batch_size, "decoder": name,
                   "fill_s": round(fill_s, 4), "epoch_online_s": round(online_s, 4), "epoch_cached_s": round(cached_s, 4),
                   "speedup": round(online_s / cached_s, 2), "cache_mb": round(cached.nbytes / 1e6, 1)}
            log(f"cache: {model} on {dataset} {size}px, {len(train.images)} images, {name} decoder: epoch online {online_s:.2f} s, "
                f"from cache {cached_s:.2f} s ({res['speedup']:.1f}x); filling the cache took {fill_s:.2f} s")
            results.append(res)
    return results


def rss_mb() -> float:
    """This process's resident set size now (MB), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def stream_rss_perf(model: str = "phikon", images: int = 200, size: int = 512, batch: int = 16, blocks: tuple[int, ...] = (-1,),
                    device: str | None = None, cache_dir: Path | None = None, log: Log = print,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Extract ``images`` random ``size``-px images through a local server into the feature cache, sampling RSS.

    The images are generated batch by batch and the grids written batch by batch, so
    the harness holds one batch of each at a time; RSS is sampled after every batch.
    ``blocks`` picks the tapped blocks: the output per image (and so the memory pressure)
    is one grid per block whatever the depth, so a shallow block keeps a large run short
    on a CPU. The cache entry is deleted afterwards.
    """
    from harness.client.feature_cache import FeatureCache, FeatureKey
    from harness.models.spec import resolve_blocks
    from harness.run.segmentation import iter_features

    spec = get_spec(model)
    idx = resolve_blocks(blocks, spec.depth)
    rng = np.random.default_rng(0)
    samples: list[tuple[int, float]] = []
    start_rss = rss_mb()

    def source() -> Iterator[np.ndarray]:
        for i in range(0, images, batch):
            yield rng.integers(0, 256, (min(batch, images - i), size, size, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory(prefix="pfmbench-perf-stream-", dir=cache_dir) as tmp:
        cache = FeatureCache(Path(tmp))
        key = FeatureKey(spec.name, spec.spec_hash(), "perf", "random:0", "random-noise", "-", "stream", f"{images}x{size}", size, idx)
        with LocalRuntime(spec, ResolvedWeights.random(), transfer="shm", device=device) as rt:
            done = 0

            def sample(n: int) -> None:  # after each batch: images so far and the harness's RSS
                nonlocal done
                done += n
                samples.append((done, rss_mb()))
                if progress:
                    progress(n)

            t = time.perf_counter()
            stored = cache.put(key, iter_features(rt, source(), idx, on_batch=sample))
            wall = time.perf_counter() - t
            written = stored.nbytes
            del stored
    rss = [r for _, r in samples]
    first_decile = rss[: max(1, len(rss) // 10)]
    res = {"model": model, "images": images, "size": size, "batch": batch, "blocks": list(idx), "written_gb": round(written / 1e9, 3),
           "wall_s": round(wall, 1), "images_per_s": round(images / wall, 2), "rss_start_mb": round(start_rss, 1),
           "rss_peak_mb": round(max(rss), 1), "rss_growth_after_first_tenth_mb": round(max(rss) - max(first_decile), 1),
           "peak_rss_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1),  # KiB on Linux
           "rss_samples": [[n, round(r, 1)] for n, r in samples[:: max(1, len(samples) // 50)]]}
    log(f"stream: {images} images at {size}px through {model} blocks {list(idx)}: {res['written_gb']} GB written in {wall:.0f} s; "
        f"harness RSS {start_rss:.0f} -> peak {max(rss):.0f} MB (growth after the first tenth {res['rss_growth_after_first_tenth_mb']} MB)")
    return res


def write_json(report: PerfReport, path: Path, device: str | None) -> None:
    import torch

    meta = {"host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": device or ("cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")}
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "results": [asdict(r) for r in report.transfer], "cache": report.cache, "stream": report.stream, "skipped": report.skipped}
    path.write_text(json.dumps(doc, indent=1))
