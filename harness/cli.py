"""``pfmbench``: a thin Typer front end. Each command parses, calls one library function, prints.

Errors the library raises on purpose (:class:`~harness.errors.PfmbenchError`) become
one line on stderr, ``error: <what> (fix: <how>)``, and exit code 1;
``PFMBENCH_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import constants
from harness.errors import ConfigError, PfmbenchError, first_problem

app = typer.Typer(
    name="pfmbench",
    help="Benchmark pathology foundation models on segmentation: serve token features over Triton, train decoders, score, record.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
models_app = typer.Typer(help="List and inspect models (one models/<name>/Dockerfile each).", no_args_is_help=False)
data_app = typer.Typer(help="List, inspect and prepare datasets (one dataset_cards/<name>.yaml each).", no_args_is_help=True)
images_app = typer.Typer(help="Build, push and pull model images (models/images.lock pins them by digest).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(images_app, name="images")
cache_app = typer.Typer(help="The feature cache: token grids of frozen runs, reused by every later run with the same key (docs/performance.md).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")
distill_app = typer.Typer(help="GPFM's expert + self distillation from served teachers, and export of the student into the zoo (docs/gpfm.md).",
                          no_args_is_help=True)
app.add_typer(distill_app, name="distill")

out = Console()
if not out.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    out = Console(width=200)


def _log(message: str) -> None:
    """Progress lines from library code: printed as plain text (build output holds brackets rich would parse)."""
    out.print(message, markup=False, highlight=False)


def _model_names(incomplete: str) -> list[str]:
    from harness.spec import list_models

    return [m for m in list_models() if m.startswith(incomplete)]


def _card_names(incomplete: str) -> list[str]:
    from harness.data.cards import list_cards

    return [c for c in list_cards() if c.startswith(incomplete)]


# Shared options, defined once.
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name (see 'pfmbench models').", autocompletion=_model_names)]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Dataset card (see 'pfmbench data list').", autocompletion=_card_names)]
WeightsOpt = Annotated[str, typer.Option(help="random (untrained, real architecture) | hub (needs HF_TOKEN for gated models) | <dir or file>.")]
RuntimeOpt = Annotated[str, typer.Option(help="auto (docker if a daemon answers, else local) | docker | local | inprocess.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of decoder init, data order and bootstrap.")]
ResultsOpt = Annotated[Optional[Path], typer.Option("--results-dir", help="Results store (default: ./results or $PFMBENCH_RESULTS).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where datasets live (default: ~/.cache/pfmbench/data or $PFMBENCH_DATA).")]


@app.command(epilog="Examples:\n\n  pfmbench bench -m phikon -d nuclei-sample --weights random --epochs 2\n\n"
                    "  pfmbench bench -m phikon,uni -d nuclei-sample -s frozen,lora,cnn_adapter --epochs 2   (finished runs are skipped)\n\n"
                    "  pfmbench bench -m phikon -d roi-sample --task roi-linear   (GPFM's linear probe on the CLS embedding; docs/gpfm.md)")
def bench(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name(s), comma-separated (see 'pfmbench models').", autocompletion=_model_names)],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset card(s), comma-separated (see 'pfmbench data list').", autocompletion=_card_names)],
    task: Annotated[str, typer.Option(help="segmentation (dense masks) | roi-linear (GPFM's linear probe on the frozen CLS) | roi-knn (kNN retrieval, top-1/3/5). "
                                      "ROI tasks need an ROI card and use the gpfm recipe; --epochs caps the probe's epochs.")] = "segmentation",
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Adaptation strategy(ies), comma-separated: frozen | lora | dora | cnn_adapter | transformer_adapter | full. "
                                          "All but frozen train through the backbone in a training job (docs/strategies.md).")] = "frozen",
    weights: WeightsOpt = "random",
    runtime: RuntimeOpt = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the preset's 150, or the card's demo default).")] = None,
    seed: SeedOpt = 42,
    preset: Annotated[Optional[str], typer.Option(help="densebench (the default: the reference code, quirks included) | corrected (schedule fixed, select on mDice, "
                                                  "peft LoRA/DoRA, slide inference); ROI tasks: gpfm.")] = None,
    decoder: Annotated[str, typer.Option(help="transunet (reference) | linear.")] = "transunet",
    blocks: Annotated[Optional[str], typer.Option(help="Comma-separated block indices, -1 = last after the final norm (default: the model's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size (default 8).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-3).")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="Square input size (default: the card's rule for the model's patch size).")] = None,
    inference: Annotated[Optional[str], typer.Option(help="Test-time inference: resize (the reference; densebench preset) | slide (windows at the original resolution; corrected preset).")] = None,
    window: Annotated[Optional[int], typer.Option(help="Slide window in px (default: the input size).")] = None,
    overlap: Annotated[Optional[float], typer.Option(help="Slide overlap between windows, 0..<1 (default 0.2).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="host:port of a running feature server (e.g. from compose/serve.yml); nothing is started. Frozen only.")] = None,
    rerun: Annotated[bool, typer.Option(help="Run again even if the run key already has a row (default: finished runs are skipped).")] = False,
    feature_cache: Annotated[bool, typer.Option(help="Frozen: read token grids from the feature cache ($PFMBENCH_FEATURES, default ~/.cache/pfmbench/features) "
                                                "when an earlier run extracted them, else extract and store them there.")] = True,
    results_dir: ResultsOpt = None,
    data_dir: DataDirOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run models x datasets x strategies and append one row per run to the results store.

    A run is identified by its run key (configuration, model spec, card, weights and image
    digest). A run that already has a row is skipped; an interrupted training job resumes
    from its last checkpoint when the same command runs again.
    """
    if task != "segmentation":
        if strategy != "frozen" or decoder != "transunet" or blocks or inference:
            raise ConfigError(f"--task {task} trains a head on the frozen CLS embedding", "drop --strategy, --decoder, --blocks and --inference")
        _bench_roi(task, model, dataset, weights, runtime, preset or "gpfm", epochs, seed, batch_size, lr, input_size, endpoint, rerun,
                   results_dir, data_dir, progress)
        return
    preset = preset or "densebench"
    from harness.bench import resolve_config, run_bench

    block_list = tuple(int(b) for b in blocks.split(",")) if blocks else None
    grid = [(m, d, s) for m in _split(model) for d in _split(dataset) for s in _split(strategy)]
    configs = []
    for m, d, s in grid:  # resolve every configuration before the first run starts: a typo fails at once
        configs.append(resolve_config(
            m, d, runtime="endpoint" if endpoint else runtime, preset=preset, strategy=s, weights=weights, epochs=epochs,
            seed=seed, decoder=decoder, blocks=block_list, batch_size=batch_size, lr=lr, input_size=input_size,
            inference=inference, window=window, overlap=overlap,
        ))
    for i, (cfg, why) in enumerate(configs, 1):
        if endpoint:
            why = f"the server at {endpoint}"
        count = f"[{i}/{len(configs)}] " if len(configs) > 1 else ""
        out.print(f"[dim]{count}{cfg.model} on {cfg.dataset}: {cfg.strategy}, {cfg.epochs} epochs, preset {cfg.preset}, weights {cfg.weights}, "
                  f"inference {cfg.inference}; {why}[/dim]")
        row = run_bench(cfg, results_dir=results_dir, data_dir=data_dir, show_progress=progress, endpoint=endpoint, skip_finished=not rerun,
                        feature_cache=feature_cache, notify=lambda msg: out.print(f"[yellow]{'note' if msg.startswith('skipped') else 'licence'}:[/yellow] {escape(msg)}"))
        _print_row(row.model_dump())
        out.print(f"row {row.row_id} in {(results_dir or constants.RESULTS_DIR) / 'rows'} (wall {row.wall_time_s:.1f} s, transfer {row.transfer}, "
                  f"trainable {row.trainable_params or 0:,} params)")


def _bench_roi(task: str, model: str, dataset: str, weights: str, runtime: str, preset: str, epochs: int | None, seed: int, batch_size: int | None,
               lr: float | None, input_size: int | None, endpoint: str | None, rerun: bool, results_dir: Path | None, data_dir: Path | None,
               progress: bool) -> None:
    from harness.roi.run import resolve_roi_config, run_roi

    if task not in ("roi-linear", "roi-knn"):
        raise ConfigError(f"unknown task '{task}'", "use segmentation, roi-linear or roi-knn")
    configs = [resolve_roi_config(task, m, d, runtime="endpoint" if endpoint else runtime, preset=preset, weights=weights, epochs=epochs, seed=seed,
                                  batch_size=batch_size, lr=lr, input_size=input_size)
               for m in _split(model) for d in _split(dataset)]
    for i, (cfg, why) in enumerate(configs, 1):
        count = f"[{i}/{len(configs)}] " if len(configs) > 1 else ""
        out.print(f"[dim]{count}{cfg.model} on {cfg.dataset}: {cfg.task}, preset {cfg.preset}, weights {cfg.weights}; "
                  f"{f'the server at {endpoint}' if endpoint else why}[/dim]")
        row = run_roi(cfg, results_dir=results_dir, data_dir=data_dir, show_progress=progress, endpoint=endpoint, skip_finished=not rerun,
                      notify=lambda msg: out.print(f"[yellow]{'note' if msg.startswith('skipped') else 'licence'}:[/yellow] {escape(msg)}"))
        _print_row(row.model_dump())
        out.print(f"row {row.row_id} in {(results_dir or constants.RESULTS_DIR) / 'rows'} (wall {row.wall_time_s:.1f} s, transfer {row.transfer})")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command(epilog="The harness writes RUN_DIR/job.json and starts this command (in the model's image or locally); "
                    "'pfmbench bench -s lora ...' is how users run it.")
def train(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding job.json; checkpoint.pt, best.pt and result.json are written there.")],
) -> None:
    """Run one training job (LoRA, DoRA, CNN/Transformer adapter, full): train, select on validation, test once.

    Progress is printed as JSON event lines; a killed job resumes from its last checkpoint when run again.
    """
    from harness.train.job import JOB_FILE, run_job

    if not (run_dir / JOB_FILE).is_file():
        from harness.errors import ConfigError

        raise ConfigError(f"{run_dir / JOB_FILE} does not exist", "start training with 'pfmbench bench -s <strategy> ...', which writes it")
    run_job(run_dir)


def _print_row(row: dict) -> None:
    from harness.results.schema import METRICS, ROI_METRICS, TOPK_METRICS

    roi = row.get("task", "segmentation") != "segmentation"
    weights = row["weights"] + ("  [yellow](untrained: not comparable to published numbers)[/yellow]" if row["weights"] == "random" else "")
    t = Table(title=f"{row['model']} on {row['dataset']} (test split, {row['split_sizes'][2]} images)  weights: {weights}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("95% CI", justify="right")
    for m in ROI_METRICS if roi else METRICS:
        value = "-" if row[m] is None else f"{row[m]:.4f}"
        ci = "-" if row[m + "_ci_low"] is None else f"{row[m + '_ci_low']:.4f} - {row[m + '_ci_high']:.4f}"
        t.add_row(m, value, ci)
    for m in TOPK_METRICS if roi and row.get("top1_acc") is not None else ():
        t.add_row(m, f"{row[m]:.4f}", "")
    out.print(t)
    if roi:
        c = Table(title="per class")
        c.add_column("class")
        c.add_column("F1", justify="right")
        for name, f1 in zip(row["class_names"], row["per_class_f1"]):
            c.add_row(name, "absent" if f1 is None else f"{f1:.4f}")
        out.print(c)
        return
    c = Table(title="per class")
    for col in ("class", "IoU", "Dice"):
        c.add_column(col, justify="right" if col != "class" else "left")
    for name, iou, dice in zip(row["class_names"], row["per_class_iou"], row["per_class_dice"]):
        c.add_row(name, "absent" if iou is None else f"{iou:.4f}", "absent" if dice is None else f"{dice:.4f}")
    out.print(c)
    from harness.results.schema import INSTANCE_METRICS

    if any(row.get(m) is not None for m in INSTANCE_METRICS):
        i = Table(title="instances (nuclei; IoU > 0.5 matching, watershed-split predictions)")
        for m in INSTANCE_METRICS:
            i.add_column(m, justify="right")
        i.add_row(*["-" if row.get(m) is None else f"{row[m]:.4f}" for m in INSTANCE_METRICS])
        out.print(i)


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, pattern: Annotated[str, typer.Option(help="Glob filter on names.")] = "*") -> None:
    """List the models (one per models/<name>/Dockerfile), with whether each image is built and weights are cached."""
    if ctx.invoked_subcommand:
        return
    from harness.zoo import zoo_status

    t = Table(title="models (image: built locally?  weights: checkpoint on this machine?)")
    for col in ("name", "architecture", "builder", "params (M)", "patch", "dim", "prefix", "licence", "gated", "image", "weights"):
        t.add_column(col, justify="right" if col in ("params (M)", "patch", "dim", "prefix") else "left")
    rows, note = zoo_status(pattern)
    for r in rows:
        s = r.spec
        t.add_row(s.name, s.arch, s.builder, f"{s.params_m:.1f}", str(s.patch_size), str(s.embed_dim), str(s.prefix_tokens),
                  s.license, "yes" if s.gated else "no", r.image, r.weights)
    out.print(t)
    if note:
        out.print(f"[dim]{note}[/dim]")


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(autocompletion=_model_names)]) -> None:
    """Print one model's full spec (as parsed from its Dockerfile LABELs)."""
    from harness.spec import get_spec

    spec = get_spec(name)
    out.print_json(json.dumps({**spec.model_dump(mode="json"), "spec_hash": spec.spec_hash()}))


@data_app.command("list")
def data_list() -> None:
    """List the dataset cards: the 18 segmentation datasets, GPFM's 14 ROI tasks and the built-in samples."""
    from harness.data.cards import get_card, list_cards

    t = Table(title="dataset cards (files '?': no source states the count)")
    for col in ("name", "task", "title", "format", "classes", "files", "split", "size (p14/p16)", "licence"):
        t.add_column(col, justify="right" if col in ("classes", "files") else "left")
    for name in list_cards():
        c = get_card(name)
        t.add_row(c.name, c.task, c.title, c.format, str(c.num_classes), "?" if c.expected.files is None else str(c.expected.files),
                  c.split.rule, f"{c.input_size.patch14}/{c.input_size.patch16}", c.source.license.split(" (")[0])
    out.print(t)


@data_app.command("show")
def data_show(card: Annotated[str, typer.Argument(autocompletion=_card_names)]) -> None:
    """Print one dataset card (classes, layout, mask rule, split, what is unverified)."""
    from harness.data.cards import get_card

    c = get_card(card)
    out.print_json(json.dumps({**c.model_dump(mode="json"), "card_hash": c.card_hash()}))


@data_app.command("prepare", epilog="Example: pfmbench data prepare consep --from ~/downloads/CoNSeP")
def data_prepare(
    card: Annotated[str, typer.Argument(autocompletion=_card_names)],
    source: Annotated[Optional[Path], typer.Option("--from", help="Folder the download was unpacked into (not needed for built-in samples).")] = None,
    data_dir: DataDirOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Validate a download against its card (counts, sizes, labels, readability), then write index.parquet and preview.png.

    Nothing is copied: the index points at the download. Nothing is written unless every sample passes.
    """
    from harness.data.cards import get_card
    from harness.data.prepare import prepare
    from harness.progress import progress_bar

    c = get_card(card)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"checking {c.name}", total=None, info="")
        report = prepare(c, source, data_dir, on_sample=lambda n, total: bar.update(task, completed=n, total=total))
    parts = ", ".join(f"{k} {v}" for k, v in report.split_sizes.items())
    out.print(f"{c.name}: {report.samples} samples at {report.root} ({c.split.rule} split: {parts})")
    if c.task == "segmentation":
        pixels = sum(report.class_pixels.values()) or 1
        out.print("class pixels: " + ", ".join(f"{k} {v / pixels:.1%}" for k, v in report.class_pixels.items()))
    else:
        out.print("images per class: " + ", ".join(f"{k} {v}" for k, v in report.class_images.items()))
    out.print(f"wrote {report.out_dir}/index.parquet and preview.png "
              f"({report.images_per_s:.0f} samples/s, peak memory {report.peak_rss_mb:.0f} MB)")


@cache_app.command("list")
def cache_list() -> None:
    """Every cached split: model, dataset, split, size, blocks, images and bytes on disk."""
    from harness.feature_cache import FeatureCache

    cache = FeatureCache()
    t = Table(title=str(cache.root))
    for col in ("entry", "model", "dataset", "split", "size", "blocks", "images", "environment", "MB"):
        t.add_column(col)
    total = 0
    for path, meta, nbytes in cache.entries():
        k = meta["key"]
        total += nbytes
        t.add_row(path.name[:12], k["model"], k["dataset"], k["split"], str(k["size"]), str(k["blocks"]), str(meta["shape"][0]),
                  k["environment"][:40], f"{nbytes / 1e6:.1f}")
    out.print(t)
    out.print(f"{total / 1e9:.2f} GB in {len(t.rows)} entries")


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete every cached split (later frozen runs extract again)."""
    from harness.feature_cache import FeatureCache

    cache = FeatureCache()
    count, freed = cache.clear()
    out.print(f"removed {count} entries ({freed / 1e9:.2f} GB) from {cache.root}")


@distill_app.command("run", epilog="Examples:\n\n  pfmbench distill run --out runs/tiny   (tiny student, phikon + uni served, 300 steps)\n\n"
                                    "  pfmbench distill run --out runs/tiny --teacher-cache   (fixed global views: teacher features computed once)\n\n"
                                    "  pfmbench distill run --preset gpfm --weights hub --dataset <card> --out runs/gpfm   (the GPFM recipe; a GPU job)")
def distill_run(
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory: distill.json, checkpoint.pt, losses.jsonl, student.pt. Run the same command again to resume.")],
    preset: Annotated[str, typer.Option(help="tiny (CPU demo: ViT 192d x 4, 1024 prototypes) | gpfm (GPFM's recipe: ViT-L/14, UNI + Phikon + CONCH).")] = "tiny",
    teachers: Annotated[Optional[str], typer.Option(help="Comma-separated zoo models to distil from (default: the preset's). Each is served in its own runtime.")] = None,
    weights: Annotated[str, typer.Option("--weights", help="Teacher weights: random | hub | <dir>.")] = "random",
    dataset: Annotated[str, typer.Option(help="Card whose training split supplies the images (any task).", autocompletion=_card_names)] = "nuclei-sample",
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (each gives 2 global and N local crops).")] = None,
    max_images: Annotated[Optional[int], typer.Option(help="Use only the first N training images.")] = None,
    seed: SeedOpt = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    teacher_cache: Annotated[bool, typer.Option(help="Fix the global views (resize + mirror) and compute each image's teacher features once.")] = False,
    runtime: RuntimeOpt = "auto",
    data_dir: DataDirOpt = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars (each loss term on the bar).")] = True,
) -> None:
    """Distil served teachers into a student ViT: expert distillation (one head per teacher, CLS cosine and
    patch cosine + SmoothL1) plus DINO, iBOT and KoLeo self-distillation with an EMA teacher and multi-crop.

    Teacher requests for the next step run while the student trains on this one. Killed? Run the same command again.
    """
    from harness.distill.config import PRESETS, DistillConfig
    from harness.distill.trainer import distill
    from harness.runtime import choose_runtime

    if preset not in PRESETS:
        raise ConfigError(f"unknown distillation preset '{preset}'", f"use one of {', '.join(PRESETS)}")
    chosen, why = choose_runtime(runtime)  # type: ignore[arg-type]
    from harness.spec import get_spec

    names = tuple(_split(teachers)) if teachers else None
    for name in names or ():
        get_spec(name)
    try:
        cfg = DistillConfig.from_preset(preset, teachers=names, teacher_weights=weights, dataset=dataset, steps=steps,  # type: ignore[arg-type]
                                        batch_size=batch_size, max_images=max_images, seed=seed, checkpoint_every=checkpoint_every,
                                        teacher_cache=teacher_cache, runtime=chosen)
    except ValidationError as exc:
        raise ConfigError(f"distillation config: {first_problem(exc)}", "see 'pfmbench distill run --help'") from exc
    out.print(f"[dim]distil {', '.join(cfg.teachers)} into a {cfg.embed_dim}d x {cfg.depth} student on {cfg.dataset}, {cfg.steps} steps "
              f"of {cfg.batch_size} images; teachers {chosen} ({why})[/dim]")
    result = distill(cfg, out_dir, data_dir=data_dir, show_progress=progress)
    if result.resumed_from:
        out.print(f"resumed from the checkpoint at step {result.resumed_from}")
    t = Table(title=f"loss terms: mean of the first and last tenth of the steps after the teacher-temperature warm-up ({cfg.teacher_temp_warmup_steps} steps)")
    for col in ("term", "first", "last"):
        t.add_column(col, justify="left" if col == "term" else "right")
    for k in result.first:
        t.add_row(k, f"{result.first[k]:.4f}", f"{result.last[k]:.4f}")
    out.print(t)
    times = result.times
    out.print(f"median step {times['step_s']:.3f} s: student {times['student_s']:.3f} s, waiting for crops and teachers {times['teacher_wait_s']:.3f} s "
              f"(one batch through all teachers {times['teacher_request_s']:.3f} s, asked a step ahead; {result.transfer}); "
              f"student weights in {out_dir / 'student.pt'}")


@distill_app.command("export", epilog="Example: pfmbench distill export runs/tiny --name gpfm_tiny && make bench MODEL=gpfm_tiny DATASET=nuclei-sample WEIGHTS=hub")
def distill_export(
    run_dir: Annotated[Path, typer.Argument(help="A finished 'pfmbench distill run' directory.")],
    name: Annotated[str, typer.Option(help="Model name in the zoo (lower-case, digits, underscores).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model of that name.")] = False,
) -> None:
    """Make the distilled student a model of the zoo: weights to $PFMBENCH_WEIGHTS/<name>/, and models/<name>/Dockerfile."""
    from harness.distill.export import export_student

    done = export_student(run_dir, name, overwrite=overwrite)
    out.print(f"wrote {done.dockerfile} and {done.weights} (sha256 {done.sha256[:12]}...); "
              f"benchmark it with: pfmbench bench -m {name} -d nuclei-sample --weights hub")


@app.command()
def results(
    results_dir: ResultsOpt = None,
    sql: Annotated[Optional[str], typer.Option(help="DuckDB SQL over the view 'rows'.")] = None,
) -> None:
    """Print the result rows as a table."""
    from harness.results.store import query

    rel = query(sql or "SELECT row_id, created_at, task, model, weights, dataset, strategy, decoder, preset, epochs, seed, runtime, transfer, mIoU, mDice, macro_auroc, macro_f1, wall_time_s FROM rows ORDER BY created_at", results_dir)
    if rel is None:
        out.print(f"no result rows in {(results_dir or constants.RESULTS_DIR) / 'rows'} yet; run 'pfmbench bench' first")
        return
    t = Table()
    for col in rel.columns:
        t.add_column(col)
    for r in rel.fetchall():
        t.add_row(*[f"{v:.4f}" if isinstance(v, float) else ("sha256:" + v[7:19] + "..." if isinstance(v, str) and v.startswith("sha256:") else str(v)) for v in r])
    out.print(t)


@app.command(epilog="Examples:\n\n  pfmbench sweep -m phikon,uni -d nuclei-sample -s frozen,lora --seeds 42,43 --epochs 2 --concurrency 2\n\n"
                    "  pfmbench sweep grid.yaml --executor ray --ray-address 127.0.0.1:6379\n\n"
                    "  pfmbench sweep grid.yaml --plan --perf .perf/zoo-cuda.json   (estimate only)")
def sweep(
    grid: Annotated[Optional[Path], typer.Argument(help="YAML grid (models, datasets, strategies, seeds, preset, weights, runtime, overrides, retries); docs/sweeps.md.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Models, comma-separated (instead of a grid file).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset cards, comma-separated.")] = None,
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Strategies, comma-separated.")] = "frozen",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "42",
    preset: Annotated[str, typer.Option(help="densebench | corrected.")] = "densebench",
    weights: WeightsOpt = "random",
    runtime: RuntimeOpt = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: preset / card).")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="Square input size (default: the card's rule).")] = None,
    retries: Annotated[int, typer.Option(help="Extra attempts of a failed job.")] = 2,
    executor: Annotated[str, typer.Option(help="local (this machine) | ray (a Ray cluster).")] = "local",
    concurrency: Annotated[int, typer.Option(help="local: jobs at once.")] = 1,
    ray_address: Annotated[Optional[str], typer.Option(help="ray: cluster address (default: start a local Ray).")] = None,
    cpus_per_job: Annotated[float, typer.Option(help="ray: CPUs each job asks for.")] = 1.0,
    gpus_per_job: Annotated[float, typer.Option(help="ray: GPUs each job asks for.")] = 0.0,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds before an attempt is killed and retried.")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Only estimate the compute time of the grid, run nothing.")] = False,
    perf_json: Annotated[Optional[Path], typer.Option("--perf", help="--plan: a zoo-perf JSON (img/s per model) to estimate from.")] = None,
    gpus: Annotated[int, typer.Option(help="--plan: devices to spread the grid over.")] = 1,
    job_overhead: Annotated[float, typer.Option(help="--plan: seconds each job costs beyond compute (process start, imports, row write).")] = 5.0,
    results_dir: ResultsOpt = None,
    data_dir: DataDirOpt = None,
    progress: Annotated[bool, typer.Option(help="Show the live job table.")] = True,
) -> None:
    """Run a grid of models x datasets x strategies x seeds: finished runs skipped, failures retried, one row per run key.

    Kill it and run it again: finished jobs are skipped and training jobs resume from their checkpoints.
    """
    from harness.errors import ConfigError
    from harness.sweep.grid import SweepSpec, load_spec

    if grid is not None:
        spec = load_spec(grid)
    elif model and dataset:
        overrides = {k: v for k, v in {"epochs": epochs, "input_size": input_size}.items() if v is not None}
        spec = SweepSpec(models=_split(model), datasets=_split(dataset), strategies=_split(strategy), seeds=[int(x) for x in _split(seeds)],
                         preset=preset, weights=weights, runtime=runtime, overrides=overrides, retries=retries)
    else:
        raise ConfigError("a sweep needs a grid", "pass a YAML file, or --model and --dataset (comma-separated lists)")
    if plan:
        from harness.sweep.plan import plan_sweep

        estimate = plan_sweep(spec, perf_json, gpus, job_overhead)
        by_strategy: dict[str, list] = {}
        for j in estimate.jobs:
            by_strategy.setdefault(j.label.split(" / ")[2], []).append(j)
        t = Table(title=f"planned backbone compute for {len(estimate.jobs)} jobs ({estimate.basis})")
        for col in ("strategy", "jobs", "forwards", "est. hours"):
            t.add_column(col, justify="left" if col == "strategy" else "right")
        for name, js in by_strategy.items():
            t.add_row(name, str(len(js)), f"{sum(j.forwards for j in js):,}", f"{sum(j.hours for j in js):.2f}")
        out.print(t)
        top = Table(title="the most expensive jobs")
        for col in ("job", "images", "forwards", "est. hours"):
            top.add_column(col, justify="left" if col == "job" else "right")
        for j in sorted(estimate.jobs, key=lambda j: -j.hours)[:10]:
            top.add_row(j.label, f"{j.images:,}", f"{j.forwards:,}", f"{j.hours:.3f}")
        out.print(top)
        def dur(hours: float) -> str:
            return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min"

        out.print(f"total {dur(estimate.total_hours)} of device time (device-hours {estimate.total_hours:.2f}); on {gpus} device(s) about "
                  f"{dur(estimate.wall_hours)} wall" + (f"; the longest job alone takes {dur(max(j.hours for j in estimate.jobs))}" if estimate.jobs else ""))
        return
    from harness.sweep.executors import LocalExecutor, RayExecutor
    from harness.sweep.runner import run_sweep

    results = results_dir or constants.RESULTS_DIR
    if executor == "local":
        ex = LocalExecutor(results, data_dir, concurrency=concurrency, timeout_s=timeout)
    elif executor == "ray":
        ex = RayExecutor(results, data_dir, address=ray_address, cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job, timeout_s=timeout)
    else:
        raise ConfigError(f"unknown executor '{executor}'", "use local or ray")
    from harness.sweep.live import LiveTable

    with LiveTable(progress) as live:
        res = run_sweep(spec, ex, results, on_change=live.update)
    out.print(f"sweep {res.sweep_id}: {res.count('done')} done, {res.count('skipped')} skipped, {res.count('failed')} failed "
              f"in {res.wall_s:.1f} s ({executor}); events in {res.events}")
    for s in res.states:
        if s.status == "failed":
            out.print(f"[red]failed[/red] {escape(s.job.label)} after {s.attempts} attempt(s): {escape(s.reason)}")
    if res.count("failed"):
        raise typer.Exit(1)


@app.command("sweep-job", hidden=True)
def sweep_job(
    config: Annotated[str, typer.Option(help="The RunConfig as JSON.")],
    results_dir: ResultsOpt = None,
    data_dir: DataDirOpt = None,
    endpoint: Annotated[Optional[str], typer.Option(help="A shared feature server (frozen jobs).")] = None,
) -> None:
    """One attempt of one sweep job: compute the row (resuming a training job), print it for the driver; never store it."""
    from harness.bench import run_bench
    from harness.config import RunConfig
    from harness.sweep.executors import ROW_PREFIX

    row = run_bench(RunConfig.model_validate_json(config), results_dir=results_dir, data_dir=data_dir, write=False, endpoint=endpoint, skip_finished=True)
    sys.stdout.write(ROW_PREFIX + row.model_dump_json() + "\n")


@app.command(epilog="Example: pfmbench report --out report/ && open report/report.html")
def report(
    results_dir: ResultsOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where report.html, leaderboard.csv and the PNG figures go.")] = Path("report"),
    metric: Annotated[str, typer.Option(help="Ranking metric: mDice (the reference's headline) | mIoU | pixel_accuracy.")] = "mDice",
) -> None:
    """Leaderboard per dataset and strategy with CIs and average ranks, figures, and the difference to published numbers.

    Rows with untrained (random) weights are marked and never compared to published numbers.
    """
    from harness.errors import ConfigError
    from harness.report.html import build_report
    from harness.report.published import METRIC_NAMES

    if metric not in METRIC_NAMES:
        raise ConfigError(f"unknown metric '{metric}'", f"use one of {', '.join(METRIC_NAMES)}")
    files = build_report(results_dir, out_dir, metric)
    board = files.board
    t = Table(title=f"average rank by {metric} (1 = best; random-weight entries ranked among themselves)")
    for col in ("model", "strategy", "preset", "weights", "avg rank", "datasets"):
        t.add_column(col, justify="right" if col in ("avg rank", "datasets") else "left")
    for r in board.ranks:
        t.add_row(r.model, r.strategy, r.preset, "random" if r.random else "real", f"{r.average_rank:.2f}", str(r.datasets))
    out.print(t)
    for (dataset, strategy, preset), entries in board.groups().items():
        g = Table(title=f"{dataset} / {strategy} ({preset})")
        for col in ("rank", "model", "weights", metric, "95% CI", "published", "delta"):
            g.add_column(col, justify="left" if col in ("model", "weights") else "right")
        for e in entries:
            pub = "not compared" if e.random else ("-" if e.published is None else f"{e.published.mean:.4f}")
            g.add_row(f"{e.rank:g}", e.model, "random" if e.random else e.weights[:19], f"{e.value:.4f}", f"{e.ci_low:.4f} - {e.ci_high:.4f}",
                      pub, "" if e.delta is None else f"{e.delta:+.4f}")
        out.print(g)
    out.print(f"wrote {files.html} (self-contained), {files.csv} and {', '.join(p.name for p in files.pngs)}")


@app.command(epilog="Example: pfmbench reproduce 3f2a9c1e07bd")
def reproduce(
    row_id: Annotated[str, typer.Argument(help="The row to re-run (see 'pfmbench results').")],
    results_dir: ResultsOpt = None,
    data_dir: DataDirOpt = None,
    write: Annotated[bool, typer.Option(help="Also append the new row to the store.")] = False,
) -> None:
    """Re-run a row's configuration in the image it ran in (pulled by digest if missing) and print the deltas."""
    from harness.reproduce import reproduce as run_reproduce

    old, new = run_reproduce(row_id, results_dir=results_dir, data_dir=data_dir, write=write, log=lambda m: out.print(f"[dim]{m}[/dim]"))
    from harness.results.schema import METRICS

    t = Table(title=f"reproduce {row_id}: {old['model']} on {old['dataset']} ({new.runtime}, {new.image_digest or 'no image'})")
    for col in ("metric", "stored", "now", "delta"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    for m in METRICS:
        t.add_row(m, f"{old[m]:.6f}", f"{getattr(new, m):.6f}", f"{getattr(new, m) - old[m]:+.2e}")
    out.print(t)
    same = all(getattr(new, m) == old[m] for m in METRICS)
    out.print("[green]identical metrics[/green]" if same else "[yellow]metrics differ[/yellow]")
    if not same:
        raise typer.Exit(2)


@images_app.command("build")
def images_build(
    models: Annotated[Optional[list[str]], typer.Argument(help="Models to build (default: all).", autocompletion=_model_names)] = None,
    base_from: Annotated[str, typer.Option(help="FROM of the base image; offline: local/debian:bookworm (models/_base/offline-base.sh).")] = "",
    base_only: Annotated[bool, typer.Option(help="Build only pfmbench/base.")] = False,
    skip_base: Annotated[bool, typer.Option(help="Reuse the existing pfmbench/base.")] = False,
) -> None:
    """Build pfmbench/base (hermetic, from a wheelhouse of requirements.lock) and the model images."""
    from harness import images
    from harness.spec import list_models

    if not skip_base:
        images.build_base(base_from or images.DEFAULT_BASE_FROM, log=_log)
    if not base_only:
        for m in models or list_models():
            images.build_model(m, log=_log)


@images_app.command("push")
def images_push(
    models: Annotated[list[str], typer.Argument(autocompletion=_model_names)],
    registry: Annotated[str, typer.Option(help="Registry host/namespace (default $PFMBENCH_REGISTRY).")] = "",
) -> None:
    """Push model images and record their digests in models/images.lock."""
    from harness import images

    for m in models:
        entry = images.push(m, registry or images.DEFAULT_REGISTRY, log=_log)
        out.print(f"{m}: {entry['image']}@{entry['digest']}")


@images_app.command("pull")
def images_pull(models: Annotated[list[str], typer.Argument(autocompletion=_model_names)]) -> None:
    """Pull the locked digest of each model (models/images.lock)."""
    from harness import images

    for m in models:
        image = images.pull(m, log=_log)
        out.print(f"{m}: {images.image_identity(image)}")


@app.command(epilog="Examples:\n\n  pfmbench perf                                    (the CPU default: ViT-B, every mode, cache and streaming)\n\n"
                    "  pfmbench perf --models uni --modes inprocess,shm --no-cache-epoch --stream-images 0\n\n"
                    "  pfmbench perf --gpu --out .perf/gpu.json         (on a GPU machine: ViT-L/g/H at batch 32 and 64)\n\n"
                    "  pfmbench perf --stream-images 10000 --stream-size 512 --stream-blocks 0   (harness RSS while 15 GB stream to disk)")
def perf(
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = "phikon",
    batches: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "32",
    sizes: Annotated[str, typer.Option(help="Comma-separated square input sizes.")] = "224",
    modes: Annotated[str, typer.Option(help="Comma-separated: inprocess, shm, grpc, http, docker (needs a daemon and the model's image), "
                                       "compile (torch.compile in-process), onnx (onnxruntime in-process), onnx-shm (onnxruntime behind Triton).")]
    = "inprocess,shm,grpc,http,docker,onnx,onnx-shm",
    iters: Annotated[int, typer.Option(help="Timed calls per cell (after one warm-up).")] = 3,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda (default: cuda if available).")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="The GPU grid: uni, h_optimus_0, uni2_h at batch 32,64, 224 px, in-process vs shm, on cuda.")] = False,
    cache_epoch: Annotated[bool, typer.Option(help="Time a frozen decoder epoch from the feature cache against online extraction.")] = True,
    cache_decoders: Annotated[str, typer.Option(help="Decoders of the cache measurement: linear (light, so extraction dominates), transunet (the reference's).")]
    = "linear,transunet",
    stream_images: Annotated[int, typer.Option(help="Images to stream into the cache while sampling the harness's RSS (0: skip).")] = 256,
    stream_size: Annotated[int, typer.Option(help="Size of the streamed images (px).")] = 512,
    stream_blocks: Annotated[str, typer.Option(help="Tapped blocks while streaming (-1: the last). Each image gives one grid per block whatever "
                                               "its depth, so the default first block measures the same memory in a fraction of the CPU time.")] = "0",
    out_json: Annotated[Path, typer.Option("--out", help="Where to write the JSON results.")] = Path(".perf/perf.json"),
) -> None:
    """Throughput of token extraction in-process, served (shm, gRPC, HTTP, docker) and through onnxruntime, side by
    side with parity; the feature cache's decoder-epoch speed-up; the harness's memory while streaming to disk (docs/performance.md)."""
    from harness.perf import PerfReport, cache_epoch_perf, check_modes, run_perf, stream_rss_perf, write_json
    from harness.progress import progress_bar

    if gpu:
        models, batches, modes, device = "uni,h_optimus_0,uni2_h", "32,64", "inprocess,shm", device or "cuda"
    check_modes(tuple(_split(modes)))  # every argument is checked before the first (slow) measurement starts
    model_list = [get_spec_name(m) for m in _split(models)]
    report = PerfReport()
    if stream_images:  # first, while no model has been loaded into this process: its RSS is the harness's own
        with progress_bar(True) as bar:
            task = bar.add_task(f"stream {model_list[0]} {stream_size}px", total=stream_images, info="")
            report.stream = stream_rss_perf(model_list[0], stream_images, stream_size, blocks=tuple(int(b) for b in _split(stream_blocks)),
                                            device=device, log=_log, progress=lambda n: bar.advance(task, n))
    run_perf(model_list, [int(b) for b in _split(batches)], [int(s) for s in _split(sizes)], tuple(_split(modes)), iters, device,
             log=_log, report=report)
    if cache_epoch:
        report.cache = cache_epoch_perf(model_list[0], device=device, decoders=tuple(_split(cache_decoders)), log=_log)
    write_json(report, out_json, device)
    t = Table(title=f"token extraction throughput ({out_json})")
    for col in ("model", "mode", "batch", "px", "img/s", "p50 ms", "p90 ms", "p99 ms", "out MB/s", "vs in-process", "max |diff|"):
        t.add_column(col, justify="right")
    for r in report.transfer:
        t.add_row(r.model, r.mode, str(r.batch), str(r.size), f"{r.images_per_s:.1f}", f"{r.p50_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.p99_ms:.1f}",
                  f"{r.out_mb_per_s:.1f}", "-" if r.ratio_to_inprocess is None else f"{r.ratio_to_inprocess:.3f}",
                  "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2g}")
    out.print(t)
    for c in report.cache or []:
        out.print(f"decoder epoch ({c['model']}, {c['dataset']}, {c['images']} images at {c['size']} px, {c['decoder']} decoder): "
                  f"online extraction {c['epoch_online_s']:.2f} s, from the cache {c['epoch_cached_s']:.2f} s: [bold]{c['speedup']:.1f}x[/bold]")
    if report.stream:
        st = report.stream
        out.print(f"streaming {st['images']} images at {st['size']} px ({st['written_gb']} GB to disk): harness RSS peak [bold]{st['rss_peak_mb']:.0f} MB[/bold], "
                  f"growth after the first tenth {st['rss_growth_after_first_tenth_mb']:.0f} MB")
    for why in report.skipped:
        out.print(f"[yellow]skipped[/yellow] {escape(why)}")


@app.command("zoo-perf", epilog="Example: pfmbench zoo-perf --device cuda --batch 64 --out .perf/zoo-h100.json")
def zoo_perf(
    models: Annotated[str, typer.Option(help="Comma-separated models, or * for the whole zoo.")] = "*",
    device: Annotated[str, typer.Option(help="cpu | cuda (bf16 autocast on cuda).")] = "cpu",
    batch: Annotated[int, typer.Option(help="Images per forward.")] = 1,
    size: Annotated[int, typer.Option(help="Square input size in pixels (rounded down to each model's patch).")] = 224,
    iters: Annotated[int, typer.Option(help="Timed forwards after one warm-up (the median is reported).")] = 5,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Device peak for MFU (default: H100 dense bf16, 790, on cuda).")] = None,
    out_json: Annotated[Path, typer.Option("--out", help="Where to write the JSON results.")] = Path(".perf/zoo.json"),
) -> None:
    """Forward cost of each model in-process: params, tokens per image, GFLOPs, ms per batch, img/s, MFU."""
    from harness.spec import list_models
    from harness.zoo_perf import H100_BF16_TFLOPS, run_zoo_perf, write_json

    names = list_models() if models == "*" else [get_spec_name(m) for m in models.split(",")]
    peak = peak_tflops or (H100_BF16_TFLOPS if device.startswith("cuda") else None)
    res = run_zoo_perf(names, device, batch, size, iters, peak, log=_log)
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
    size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 224,
    batch: Annotated[int, typer.Option(help="Images per optimiser step.")] = 8,
    steps: Annotated[int, typer.Option(help="Timed steps after one warm-up (the median is reported).")] = 3,
    out_json: Annotated[Path, typer.Option("--out", help="Where to write the JSON results.")] = Path(".perf/train.json"),
) -> None:
    """Training cost per strategy: trainable parameters, seconds per optimiser step, peak memory."""
    from harness.train_perf import run_train_perf, write_json

    res = run_train_perf([get_spec_name(m) for m in _split(models)], _split(strategies), device, size, batch, steps, log=_log)
    write_json(res, out_json)
    t = Table(title=f"one optimiser step at {size}px, batch {batch}, {device} ({out_json})")
    for col in ("model", "strategy", "trainable", "s/step", "img/s", "peak MB"):
        t.add_column(col, justify="left" if col in ("model", "strategy") else "right")
    for r in res:
        t.add_row(r.model, r.strategy, f"{r.trainable_params:,}", f"{r.step_s:.3f}", f"{r.images_per_s:.1f}", f"{r.peak_mem_mb:.0f}")
    out.print(t)


def get_spec_name(name: str) -> str:
    """Validate a model name early, with the usual one-line error."""
    from harness.spec import get_spec

    return get_spec(name).name


@app.command()
def serve(
    model: ModelOpt,
    weights: WeightsOpt = "random",
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
) -> None:
    """Serve a model's token features over Triton in the foreground (Ctrl-C stops it)."""
    from harness.serve.server import serve as serve_model
    from harness.spec import get_spec

    serve_model(get_spec(model), weights, 0, host, http_port, grpc_port, metrics_port)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, SIGTERM handled like Ctrl-C (so runtimes stop)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, prog_name="pfmbench")
    except PfmbenchError as exc:
        if constants.DEBUG:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {escape(exc.one_line())}", soft_wrap=True, highlight=False, markup=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
