"""``pfmbench bench``: a grid of runs, one row each (:func:`harness.run.lifecycle.execute`)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from harness import constants
from harness.cli._app import app
from harness.cli._common import (
    AugmentChoice,
    DataDirOpt,
    DatasetsOpt,
    DecoderChoice,
    DeviceOpt,
    EngineOpt,
    EpochsOpt,
    InferenceChoice,
    InputSizeOpt,
    ModelsOpt,
    PresetChoice,
    ProgressOpt,
    RequestTimeoutOpt,
    ResultsOpt,
    RuntimeOpt,
    SeedOpt,
    StartupTimeoutOpt,
    StrategiesOpt,
    TaskChoice,
    WeightsOpt,
    int_list,
    notify,
    out,
    results_location,
    split_list,
    value,
)

EXAMPLES = ("Examples:\n\n  pfmbench bench -m phikon -d nuclei-sample --weights random --epochs 2\n\n"
            "  pfmbench bench -m phikon,uni -d nuclei-sample -s frozen,lora,cnn_adapter --epochs 2   (finished runs are skipped)\n\n"
            "  pfmbench bench -m phikon -d roi-sample --task roi-linear   (GPFM's linear probe on the CLS embedding; docs/gpfm.md)\n\n"
            "  pfmbench bench -m phikon -d slides-sample --task wsi-abmil   (GPFM's slide classification: tiles, bags, ABMIL)")


@app.command(epilog=EXAMPLES)
def bench(
    model: ModelsOpt,
    dataset: DatasetsOpt,
    task: Annotated[TaskChoice, typer.Option(help="segmentation (dense masks) | roi-linear (GPFM's linear probe on the frozen CLS) | "  # type: ignore[valid-type]
                                             "roi-knn (kNN retrieval, top-1/3/5) | wsi-abmil (ABMIL on a slide's tile embeddings) | "
                                             "wsi-survival (ABMIL Cox risk, 5-fold C-index). ROI and slide tasks need an ROI or slide card; "
                                             "--epochs caps the head's epochs.")] = "segmentation",
    strategy: StrategiesOpt = "frozen",
    weights: WeightsOpt = "random",
    runtime: RuntimeOpt = "auto",
    epochs: EpochsOpt = None,
    seed: SeedOpt = 42,
    preset: Annotated[Optional[PresetChoice], typer.Option(help="densebench (the default: the reference code, quirks included) | corrected "  # type: ignore[valid-type]
                                                           "(schedule fixed, select on mDice, peft LoRA/DoRA, slide inference); ROI and slide tasks: gpfm.")] = None,
    decoder: Annotated[DecoderChoice, typer.Option(help="transunet (reference) | linear.")] = "transunet",  # type: ignore[valid-type]
    blocks: Annotated[Optional[str], typer.Option(help="Comma-separated block indices, -1 = last after the final norm (default: the model's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size (default 8).", min=1)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-3).")] = None,
    input_size: InputSizeOpt = None,
    inference: Annotated[Optional[InferenceChoice], typer.Option(help="Test-time inference: resize (the reference; densebench preset) | "  # type: ignore[valid-type]
                                                                 "slide (windows at the original resolution; corrected preset).")] = None,
    augment: Annotated[Optional[AugmentChoice], typer.Option(help="Training augmentation: densebench (the reference's albumentations list; "  # type: ignore[valid-type]
                                                             "densebench preset) | histology (it without rain/snow/fog; corrected preset) | none. "
                                                             "A frozen run with augmentation extracts the augmented training batches every epoch.")] = None,
    window: Annotated[Optional[int], typer.Option(help="Slide window in px (default: the input size).", min=1)] = None,
    overlap: Annotated[Optional[float], typer.Option(help="Slide overlap between windows, 0..<1 (default 0.2).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="host:port of a running feature server (e.g. compose/serve.yml); nothing is started. Frozen only.")] = None,
    rerun: Annotated[bool, typer.Option(help="Run again even if the run key already has a row (default: finished runs are skipped).")] = False,
    feature_cache: Annotated[bool, typer.Option(help="Frozen: reuse token grids an earlier run extracted ($PFMBENCH_FEATURES), else store them there.")] = True,
    results_dir: ResultsOpt = None,
    data_dir: DataDirOpt = None,
    progress: ProgressOpt = True,
    startup_timeout: StartupTimeoutOpt = constants.STARTUP_TIMEOUT_S,
    request_timeout: RequestTimeoutOpt = constants.REQUEST_TIMEOUT_S,
    device: DeviceOpt = constants.DEVICE,
    engine: EngineOpt = "auto",
) -> None:
    """Run models x datasets x strategies and append one row per run to the results store.

    A run is identified by its run key (configuration, model spec, card, weights and image
    digest). A run that already has a row is skipped; an interrupted training job resumes
    from its last checkpoint when the same command runs again.
    """
    from dataclasses import replace

    from harness.errors import ConfigError
    from harness.perf.engine_choice import choose_engine
    from harness.run.lifecycle import RunContext, execute
    from harness.run.plan import expand_grid
    from harness.util.devices import resolve_device

    task_name = str(value(task))
    if task_name != "segmentation" and (value(decoder) != "transunet" or blocks or inference or augment):
        raise ConfigError(f"--task {task_name} trains a head on the frozen CLS embedding", "drop --strategy, --decoder, --blocks, --inference and --augment")
    models, datasets = split_list(model), split_list(dataset)
    if not models or not datasets:
        raise ConfigError("--model and --dataset need at least one name each", "e.g. pfmbench bench -m phikon -d nuclei-sample")
    seg = {"decoder": value(decoder), "blocks": tuple(int_list(blocks, "--blocks")) or None, "inference": value(inference),
           "augment": value(augment), "window": window, "overlap": overlap} if task_name == "segmentation" else {}
    # every configuration is resolved before the first run starts: a typo fails at once
    grid = expand_grid(task_name, models, datasets, split_list(strategy), [seed], runtime="endpoint" if endpoint else str(value(runtime)),
                       preset=value(preset), weights=weights, epochs=epochs, batch_size=batch_size, lr=lr, input_size=input_size, **seg)
    ctx = RunContext(results_dir=results_dir, data_dir=data_dir, show_progress=progress, endpoint=endpoint, feature_cache=feature_cache, notify=notify,
                     startup_timeout_s=startup_timeout, request_timeout_s=request_timeout, device=resolve_device(device),
                     engine=str(value(engine)))
    for i, (cfg, why) in enumerate(grid, 1):
        count = f"[{i}/{len(grid)}] " if len(grid) > 1 else ""
        chosen, engine_why = choose_engine(ctx.engine, cfg, ctx.device)
        what = f"{cfg.strategy}, {cfg.epochs} epochs, inference {cfg.inference}" if task_name == "segmentation" else cfg.task  # type: ignore[union-attr]
        out.print(f"[dim]{count}{cfg.model} on {cfg.dataset}: {what}, preset {cfg.preset}, weights {cfg.weights}; "
                  f"{f'the server at {endpoint}' if endpoint else why}; device {ctx.device}"
                  f"{'' if chosen == 'torch' and ctx.device == 'cpu' else f'; {engine_why}'}[/dim]")
        row = execute(cfg, replace(ctx, engine=chosen), skip_finished=not rerun)
        print_row(row.model_dump())
        out.print(f"row {row.row_id} in {results_location(results_dir)} (wall {row.wall_time_s:.1f} s, transfer {row.transfer}, "
                  f"trainable {row.trainable_params or 0:,} params)")


def _metric_table(row: dict[str, Any], metrics: tuple[str, ...]) -> Table:
    weights = row["weights"] + ("  [yellow](untrained: not comparable to published numbers)[/yellow]" if row["weights"] == "random" else "")
    unit = "slides" if row.get("task") == "wsi-abmil" else "images"
    t = Table(title=f"{row['model']} on {row['dataset']} (test split, {row['split_sizes'][2]} {unit})  weights: {weights}")
    for col in ("metric", "value", "95% CI"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for m in metrics:
        low = row.get(m + "_ci_low")
        t.add_row(m, "-" if row[m] is None else f"{row[m]:.4f}", "-" if low is None else f"{low:.4f} - {row[m + '_ci_high']:.4f}")
    return t


def _survival_table(row: dict[str, Any]) -> Table:
    weights = row["weights"] + ("  [yellow](untrained: not comparable to published numbers)[/yellow]" if row["weights"] == "random" else "")
    folds = row["fold_c_index"]
    t = Table(title=f"{row['model']} on {row['dataset']}: C-index over {len(folds)} folds ({sum(row['split_sizes'])} cases)  weights: {weights}")
    for col in ("fold", "test cases", "C-index", "95% CI"):
        t.add_column(col, justify="right")
    for k, (v, lo, hi) in enumerate(zip(folds, row["fold_c_index_ci_low"], row["fold_c_index_ci_high"]), 1):
        t.add_row(str(k), str(row["split_sizes"][k - 1]), "-" if v is None else f"{v:.4f}", "-" if lo is None else f"{lo:.4f} - {hi:.4f}")
    t.add_row("mean", "", f"{row['c_index']:.4f}", f"sd {row['c_index_std']:.4f}")
    return t


def _class_table(names: list[str], columns: dict[str, list[float | None]]) -> Table:
    t = Table(title="per class")
    t.add_column("class")
    for col in columns:
        t.add_column(col, justify="right")
    for i, name in enumerate(names):
        t.add_row(name, *["absent" if vals[i] is None else f"{vals[i]:.4f}" for vals in columns.values()])
    return t


def print_row(row: dict[str, Any]) -> None:
    """A row as the user reads it: headline metrics with CIs, per class, and (nuclei cards) instance metrics."""
    from harness.results.schema import INSTANCE_METRICS, METRICS, ROI_METRICS, TOPK_METRICS

    if row.get("task") == "wsi-survival":
        out.print(_survival_table(row))
        return
    if row.get("task", "segmentation") != "segmentation":
        topk = TOPK_METRICS if row.get("top1_acc") is not None else ()
        out.print(_metric_table(row, ROI_METRICS + topk))
        out.print(_class_table(row["class_names"], {"F1": row["per_class_f1"]}))
        return
    out.print(_metric_table(row, METRICS))
    out.print(_class_table(row["class_names"], {"IoU": row["per_class_iou"], "Dice": row["per_class_dice"]}))
    if any(row.get(m) is not None for m in INSTANCE_METRICS):
        i = Table(title="instances (nuclei; IoU > 0.5 matching, watershed-split predictions)")
        for m in INSTANCE_METRICS:
            i.add_column(m, justify="right")
        i.add_row(*["-" if row.get(m) is None else f"{row[m]:.4f}" for m in INSTANCE_METRICS])
        out.print(i)


__all__ = ["bench", "print_row"]
