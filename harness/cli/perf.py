"""Benchmarks, each writing JSON: ``perf`` (served vs in-process transfer), ``zoo-perf`` (forward cost), ``train-perf`` (step cost)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from harness.cli._app import app
from harness.cli._common import OutJsonOpt, int_list, log, out, split_list

EXAMPLES = ("Examples:\n\n  pfmbench perf                                    (the CPU default: ViT-B, every mode, cache and streaming)\n\n"
            "  pfmbench perf --models uni --modes inprocess,shm --no-cache-epoch --stream-images 0\n\n"
            "  pfmbench perf --gpu --out .perf/gpu.json         (on a GPU machine: ViT-L/g/H at batch 32 and 64)\n\n"
            "  pfmbench perf --stream-images 10000 --stream-size 512 --stream-blocks 0   (harness RSS while 15 GB stream to disk)")


def _models(names: str) -> list[str]:
    """Model names checked up front (the usual one-line error), ``*`` for the whole zoo."""
    from harness.models.spec import get_spec, list_models

    return list_models() if names == "*" else [get_spec(m).name for m in split_list(names)]


@app.command(epilog=EXAMPLES)
def perf(
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = "phikon",
    batches: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "32",
    sizes: Annotated[str, typer.Option(help="Comma-separated square input sizes.")] = "224",
    modes: Annotated[str, typer.Option(help="Comma-separated: inprocess, shm, grpc, http, docker (needs a daemon and the model's image), "
                                       "compile (torch.compile in-process), onnx (onnxruntime in-process), onnx-shm (onnxruntime behind Triton).")]
    = "inprocess,shm,grpc,http,docker,onnx,onnx-shm",
    iters: Annotated[int, typer.Option(help="Timed calls per mode in each round (after one warm-up call).", min=1)] = 1,
    rounds: Annotated[int, typer.Option(help="Rounds; every round times every mode back to back (A B C A B C ...), so load hits all alike.", min=3)] = 3,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda (default: cuda if available).")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="The GPU grid: uni, h_optimus_0, uni2_h at batch 32,64, 224 px, in-process vs shm, on cuda.")] = False,
    cache_epoch: Annotated[bool, typer.Option(help="Time a frozen decoder epoch from the feature cache against online extraction.")] = True,
    cache_decoders: Annotated[str, typer.Option(help="Decoders of the cache measurement: linear (light, so extraction dominates), transunet (the reference's).")]
    = "linear,transunet",
    stream_images: Annotated[int, typer.Option(help="Images to stream into the cache while sampling the harness's RSS (0: skip).", min=0)] = 256,
    stream_size: Annotated[int, typer.Option(help="Size of the streamed images (px).", min=1)] = 512,
    stream_blocks: Annotated[str, typer.Option(help="Tapped blocks while streaming (-1: the last). Each image gives one grid per block whatever "
                                               "its depth, so the default first block measures the same memory in a fraction of the CPU time.")] = "0",
    out_json: OutJsonOpt = Path(".perf/perf.json"),
) -> None:
    """Throughput of token extraction in-process, served (shm, gRPC, HTTP, docker) and through onnxruntime, side by
    side with parity; the feature cache's decoder-epoch speed-up; the harness's memory while streaming to disk (docs/performance.md)."""
    from harness.perf.transfer import GPU_GRID, PerfReport, cache_epoch_perf, check_modes, run_perf, section_or_error, stream_rss_perf, write_json
    from harness.util.progress import progress_bar

    if gpu:
        models, batches, modes, device = GPU_GRID["models"], GPU_GRID["batches"], GPU_GRID["modes"], device or GPU_GRID["device"]
    check_modes(tuple(split_list(modes)))  # every argument is checked before the first (slow) measurement starts
    model_list, batch_list, size_list = _models(models), int_list(batches, "--batches"), int_list(sizes, "--sizes")
    report = PerfReport()
    stream_idx = tuple(int_list(stream_blocks, "--stream-blocks"))
    if stream_images:  # first, while no model has been loaded into this process: its RSS is the harness's own
        with progress_bar(True) as bar:
            task = bar.add_task(f"stream {model_list[0]} {stream_size}px", total=stream_images, info="")
            report.stream = section_or_error(lambda: stream_rss_perf(model_list[0], stream_images, stream_size, blocks=stream_idx, device=device,
                                                                     log=log, progress=lambda n: bar.advance(task, n)))
    run_perf(model_list, batch_list, size_list, tuple(split_list(modes)), iters, device, log=log, report=report, rounds=rounds)
    if cache_epoch:
        cache = section_or_error(lambda: cache_epoch_perf(model_list[0], device=device, decoders=tuple(split_list(cache_decoders)), log=log))
        report.cache = [cache] if isinstance(cache, dict) else cache  # a failed section: one entry with its error
    write_json(report, out_json, device)
    t = Table(title=f"token extraction throughput, median over {rounds} interleaved rounds (min-max) ({out_json})")
    for col in ("model", "mode", "batch", "px", "img/s", "p50 ms", "p90 ms", "p99 ms", "out MB/s", "vs in-process", "max |diff|"):
        t.add_column(col, justify="right")
    for r in report.transfer:
        if r.error:
            t.add_row(r.model, r.mode, str(r.batch), str(r.size), f"[red]error: {escape(r.error)}[/red]", *[""] * 6)
            continue
        ratio = "-" if r.ratio_to_inprocess is None else f"{r.ratio_to_inprocess:.3f} ({r.ratio_min:.2f}-{r.ratio_max:.2f})"
        t.add_row(r.model, r.mode, str(r.batch), str(r.size), f"{r.images_per_s:.1f} ({r.images_per_s_min:.1f}-{r.images_per_s_max:.1f})",
                  f"{r.p50_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.out_mb_per_s:.1f}", ratio,
                  "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2g}")
    out.print(t)
    for c in report.cache or []:
        if "error" in c:
            out.print(f"[red]decoder epoch: {escape(c['error'])}[/red]")
            continue
        out.print(f"decoder epoch ({c['model']}, {c['dataset']}, {c['images']} images at {c['size']} px, {c['decoder']} decoder): "
                  f"online extraction {c['epoch_online_s']:.2f} s, from the cache {c['epoch_cached_s']:.2f} s: [bold]{c['speedup']:.1f}x[/bold]")
    if report.stream and "error" in report.stream:
        out.print(f"[red]streaming: {escape(report.stream['error'])}[/red]")
    elif report.stream:
        st = report.stream
        out.print(f"streaming {st['images']} images at {st['size']} px ({st['written_gb']} GB to disk): harness RSS peak [bold]{st['rss_peak_mb']:.0f} MB[/bold], "
                  f"growth after the first tenth {st['rss_growth_after_first_tenth_mb']:.0f} MB")
    for why in report.skipped:
        out.print(f"[yellow]skipped[/yellow] {escape(why)}")
    failed = len(report.failed) + (report.stream is not None and "error" in report.stream) + sum("error" in c for c in report.cache or [])
    if failed:
        raise typer.Exit(1)  # after the JSON and the table: what ran is kept, and a script sees the failure


@app.command("zoo-perf", epilog="Example: pfmbench zoo-perf --device cuda --batch 64 --out .perf/zoo-h100.json")
def zoo_perf(
    models: Annotated[str, typer.Option(help="Comma-separated models, or * for the whole zoo.")] = "*",
    device: Annotated[str, typer.Option(help="cpu | cuda (bf16 autocast on cuda).")] = "cpu",
    batch: Annotated[int, typer.Option(help="Images per forward.", min=1)] = 1,
    size: Annotated[int, typer.Option(help="Square input size in pixels (rounded down to each model's patch).", min=1)] = 224,
    iters: Annotated[int, typer.Option(help="Timed forwards after one warm-up (the median is reported).", min=1)] = 5,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Device peak for MFU (default: the detected GPU's dense bf16 peak).")] = None,
    out_json: OutJsonOpt = Path(".perf/zoo.json"),
) -> None:
    """Forward cost of each model in-process: params, tokens per image, GFLOPs, ms per batch, img/s, MFU."""
    from harness.perf.zoo import peak_tflops as detected_peak
    from harness.perf.zoo import run_zoo_perf, write_json

    res = run_zoo_perf(_models(models), device, batch, size, iters, peak_tflops or detected_peak(device), log=log)
    write_json(res, out_json)
    t = Table(title=f"forward cost at {size}px, batch {batch}, {device} ({out_json})")
    for col in ("model", "architecture", "params (M)", "tokens", "GFLOPs/img", "ms/batch", "img/s", "TFLOP/s", "MFU"):
        t.add_column(col, justify="left" if col in ("model", "architecture") else "right")
    for r in res:
        t.add_row(r.model, r.arch, f"{r.params_m:.1f}", str(r.tokens), f"{r.gflops_per_image:.1f}", f"{r.ms_per_batch:.1f}",
                  f"{r.images_per_s:.1f}", f"{r.tflops:.2f}", "-" if r.mfu is None else f"{r.mfu:.1%}")
    out.print(t)


@app.command("train-perf", epilog="Example (GPU): pfmbench train-perf --models uni --device cuda --size 512 --batch 8 --out .perf/train-h100.json")
def train_perf(
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = "phikon,uni",
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies (default: all six).")] = "frozen,lora,dora,cnn_adapter,transformer_adapter,full",
    device: Annotated[str, typer.Option(help="cpu | cuda (fp16 autocast + GradScaler on cuda, as the training job).")] = "cpu",
    size: Annotated[int, typer.Option(help="Square input size in pixels.", min=1)] = 224,
    batch: Annotated[int, typer.Option(help="Images per optimiser step.", min=1)] = 8,
    steps: Annotated[int, typer.Option(help="Timed steps after one warm-up (the median is reported).", min=1)] = 3,
    out_json: OutJsonOpt = Path(".perf/train.json"),
) -> None:
    """Training cost per strategy: trainable parameters, seconds per optimiser step, peak memory."""
    from harness.perf.train import run_train_perf, write_json

    res = run_train_perf(_models(models), split_list(strategies), device, size, batch, steps, log=log)
    write_json(res, out_json)
    t = Table(title=f"one optimiser step at {size}px, batch {batch}, {device} ({out_json})")
    for col in ("model", "strategy", "trainable", "s/step", "img/s", "peak MB"):
        t.add_column(col, justify="left" if col in ("model", "strategy") else "right")
    for r in res:
        t.add_row(r.model, r.strategy, f"{r.trainable_params:,}", f"{r.step_s:.3f}", f"{r.images_per_s:.1f}", f"{r.peak_mem_mb:.0f}")
    out.print(t)


@app.command("gpu-check", epilog="Example: make gpu-check   (= pfmbench gpu-check --out .perf/gpu-check.json, on a GPU machine)")
def gpu_check(
    device: Annotated[str, typer.Option(help="The GPU to measure (cuda, cuda:N). cpu runs the same plan at toy sizes: a rehearsal, no figures.")] = "cuda",
    out_json: OutJsonOpt = Path(".perf/gpu-check.json"),
) -> None:
    """The GPU figures in one run (about 8 minutes on an H100-class GPU): ViT-B/L/H/g img/s and MFU eager vs compile, served/in-process
    for ViT-L at batch 64, a frozen phikon row end to end with GPU utilisation sampled, one LoRA step. A failed cell records its error."""
    import tempfile

    from harness.perf.gpu_check import Plan, run_gpu_check, table_rows
    from harness.util.devices import resolve_device

    resolved = resolve_device(device)  # --device cuda without a GPU: the one-line device error
    plan = Plan(resolved) if resolved != "cpu" else Plan.toy()
    with tempfile.TemporaryDirectory(prefix="pfmbench-gpu-check-") as work:
        report = run_gpu_check(plan, Path(work), log=log, out=out_json)  # written after every cell
    t = Table(title=f"gpu-check on {report['meta']['gpu_model'] or 'cpu (rehearsal)'} ({out_json})")
    for col in ("section", "what", "result"):
        t.add_column(col)
    for row in table_rows(report):
        t.add_row(*(escape(v) for v in row))
    out.print(t)
    if any(c["error"] for c in report["cells"]):
        raise typer.Exit(1)  # after the JSON and the table: the cells that ran are kept


@app.command("slides-perf", epilog="Example: pfmbench slides-perf --out .perf/slides.json")
def slides_perf(
    card: Annotated[str, typer.Option(help="Slide card to tile and embed.")] = "slides-sample",
    model: Annotated[str, typer.Option(help="Model served for the slide features.")] = "phikon",
    size: Annotated[int, typer.Option(help="Model input size (px) of a tile.", min=16)] = 224,
    out_json: OutJsonOpt = Path(".perf/slides.json"),
) -> None:
    """Tiling tiles/s and peak RSS over a card's slides; slide-feature tiles/s and the harness's peak RSS on a slide and on
    mosaics of it 4 and 16 times larger (streamed: memory flat in the number of tiles)."""
    from harness.models.spec import get_spec
    from harness.perf.slides import slides_perf as measure
    from harness.perf.slides import write

    get_spec(model)
    doc = measure(card, model, size, log=log)
    write(doc, out_json)
    t = Table(title=f"slides: {card}, {model} at {size} px")
    for col in ("step", "tiles", "tiles/s", "peak RSS (MB)"):
        t.add_column(col, justify="left" if col == "step" else "right")
    tiling = doc["tiling"]
    t.add_row(f"tiling ({tiling['slides']} slides)", str(tiling["tiles"]), f"{tiling['tiles_per_s']:.1f}", f"{tiling['peak_rss_mb']:.0f}")
    for b in doc["bags"]:
        t.add_row(f"slide features, {b['mosaic']}x{b['mosaic']} mosaic", str(b["tiles"]), f"{b['tiles_per_s']:.1f}", f"{b['peak_rss_mb']:.0f}")
    out.print(t)
    out.print(f"wrote {out_json}")
