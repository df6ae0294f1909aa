"""``pfmbench sweep``: a grid run on this machine or a Ray cluster, or only its estimated cost (docs/sweeps.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from harness.cli._app import app
from harness.cli._common import DataDirOpt, EpochsOpt, ExecutorChoice, InputSizeOpt, PresetChoice, ResultsOpt, RuntimeOpt, WeightsOpt, int_list, out, split_list, value

EXAMPLES = ("Examples:\n\n  pfmbench sweep -m phikon,uni -d nuclei-sample -s frozen,lora --seeds 42,43 --epochs 2 --concurrency 2\n\n"
            "  RAY_AUTH_MODE=token pfmbench sweep grid.yaml --executor ray --ray-address 127.0.0.1:6379\n\n"
            "  pfmbench sweep grid.yaml --plan --perf .perf/zoo-cuda.json   (estimate only)")


@app.command(epilog=EXAMPLES)
def sweep(
    grid: Annotated[Optional[Path], typer.Argument(help="YAML grid (models, datasets, strategies, seeds, preset, weights, runtime, overrides, retries); docs/sweeps.md.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Models, comma-separated (instead of a grid file).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset cards, comma-separated.")] = None,
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="Strategies, comma-separated.")] = "frozen",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "42",
    preset: Annotated[PresetChoice, typer.Option(help="densebench (the reference) | corrected.")] = "densebench",  # type: ignore[valid-type]
    weights: WeightsOpt = "random",
    runtime: RuntimeOpt = "auto",
    epochs: EpochsOpt = None,
    input_size: InputSizeOpt = None,
    retries: Annotated[int, typer.Option(help="Extra attempts of a failed job.", min=0)] = 2,
    executor: Annotated[ExecutorChoice, typer.Option(help="local (this machine) | ray (a Ray cluster).")] = "local",  # type: ignore[valid-type]
    concurrency: Annotated[Optional[int], typer.Option(help="local: jobs at once (default: one per GPU, each job on its own GPU; 1 without a GPU).", min=1)] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="ray: cluster address (default: start a local Ray). Run with RAY_AUTH_MODE=token, as the cluster was started (docs/sweeps.md).")] = None,
    cpus_per_job: Annotated[float, typer.Option(help="ray: CPUs each job asks for.")] = 1.0,
    gpus_per_job: Annotated[Optional[float], typer.Option(help="ray: GPUs each job asks for (default: 1 where the cluster has GPUs, else 0).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds before an attempt is killed and retried.")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Only estimate the compute time of the grid, run nothing.")] = False,
    perf_json: Annotated[Optional[Path], typer.Option("--perf", help="--plan: a zoo-perf JSON (img/s per model) to estimate from.")] = None,
    train_perf_json: Annotated[Optional[Path], typer.Option("--train-perf", help="--plan: a train-perf JSON (img/s per model and strategy): "
                                                                "training steps cost what was measured instead of 3 forwards.", exists=True, dir_okay=False)] = None,
    gpus: Annotated[int, typer.Option(help="--plan: devices to spread the grid over.", min=1)] = 1,
    job_overhead: Annotated[float, typer.Option(help="--plan: seconds each job costs beyond compute (process start, imports, row write).")] = 5.0,
    results_dir: ResultsOpt = None,
    data_dir: DataDirOpt = None,
    progress: Annotated[bool, typer.Option(help="Show the live job table.")] = True,
) -> None:
    """Run a grid of models x datasets x strategies x seeds: finished runs skipped, failures retried, one row per run key.

    Kill it and run it again: finished jobs are skipped and training jobs resume from their checkpoints.
    """
    from harness import constants
    from harness.errors import ConfigError
    from harness.sweep.grid import SweepSpec, load_spec

    if grid is not None:
        spec = load_spec(grid)
    elif model and dataset:
        overrides = {k: v for k, v in {"epochs": epochs, "input_size": input_size}.items() if v is not None}
        spec = SweepSpec(models=split_list(model), datasets=split_list(dataset), strategies=split_list(strategy), seeds=int_list(seeds, "--seeds"),
                         preset=str(value(preset)), weights=weights, runtime=str(value(runtime)), overrides=overrides, retries=retries)
    else:
        raise ConfigError("a sweep needs a grid", "pass a YAML file, or --model and --dataset (comma-separated lists)")
    if plan:
        _print_plan(spec, perf_json, gpus, job_overhead, train_perf_json)
        return
    from harness.sweep.executors import make_executor
    from harness.sweep.live import LiveTable
    from harness.sweep.runner import SweepInterrupted, run_sweep

    results = results_dir or constants.RESULTS_DIR
    ex = make_executor(str(value(executor)), results, data_dir, concurrency=concurrency, timeout_s=timeout, address=ray_address,
                       cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job)
    try:
        with LiveTable(progress) as live:
            res = run_sweep(spec, ex, results, on_change=live.update)
    except SweepInterrupted as stop:
        res = stop.result
        out.print(f"[yellow]interrupted[/yellow] sweep {res.sweep_id} after {res.wall_s:.1f} s: {res.count('done')} done, "
                  f"{res.count('skipped')} skipped, {res.count('failed')} failed, {res.count('interrupted')} stopped (no row); "
                  f"events in {res.events}. The same command resumes: finished jobs are skipped, a training job continues from its checkpoint.")
        raise typer.Exit(130) from None
    out.print(f"sweep {res.sweep_id}: {res.count('done')} done, {res.count('skipped')} skipped, {res.count('failed')} failed "
              f"in {res.wall_s:.1f} s ({value(executor)}); events in {res.events}")
    for s in res.states:
        if s.status == "failed":
            out.print(f"[red]failed[/red] {escape(s.job.label)} after {s.attempts} attempt(s): {escape(s.reason)}")
    if res.count("failed"):
        raise typer.Exit(1)


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def _print_plan(spec, perf_json: Path | None, gpus: int, job_overhead: float, train_perf_json: Path | None) -> None:
    from harness.sweep.plan import plan_sweep

    estimate = plan_sweep(spec, perf_json, gpus, job_overhead, train_perf_json)
    t = Table(title=f"planned backbone compute for {len(estimate.jobs)} jobs ({estimate.basis})")
    for col in ("strategy", "jobs", "forwards", "est. hours"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for name, js in estimate.by_strategy().items():
        t.add_row(name, str(len(js)), f"{sum(j.forwards for j in js):,}", f"{sum(j.hours for j in js):.2f}")
    out.print(t)
    top = Table(title="the most expensive jobs")
    for col in ("job", "images", "forwards", "est. hours"):
        top.add_column(col, justify="left" if col == "job" else "right")
    for j in estimate.most_expensive():
        top.add_row(j.label, f"{j.images:,}", f"{j.forwards:,}", f"{j.hours:.3f}")
    out.print(top)
    if unknown := estimate.unknown_counts:
        out.print(f"[yellow]not counted[/yellow]: {len(unknown)} job(s) on cards that state no file count ({', '.join(unknown[:5])}"
                  f"{', ...' if len(unknown) > 5 else ''}); add expected.files to those cards for a full estimate")
    out.print(f"total {_duration(estimate.total_hours)} of device time (device-hours {estimate.total_hours:.2f}); on {gpus} device(s) about "
              f"{_duration(estimate.wall_hours)} wall; the longest job alone takes {_duration(estimate.longest_hours)}")


@app.command("sweep-job", hidden=True)
def sweep_job(
    config: Annotated[str, typer.Option(help="The RunConfig as JSON.")],
    results_dir: ResultsOpt = None,
    data_dir: DataDirOpt = None,
    endpoint: Annotated[Optional[str], typer.Option(help="A shared feature server (frozen jobs).")] = None,
) -> None:
    """One attempt of one sweep job: compute the row (resuming a training job), print it for the driver; never store it."""
    from harness.config import RunConfig
    from harness.run.lifecycle import execute
    from harness.sweep.executors import ROW_PREFIX

    row = execute(RunConfig.model_validate_json(config), results_dir=results_dir, data_dir=data_dir, endpoint=endpoint, write=False, skip_finished=True)
    sys.stdout.write(ROW_PREFIX + row.model_dump_json() + "\n")
