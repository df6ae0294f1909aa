"""One lifecycle for every task: plan -> claim the run key -> skip or compute (extract, train, score) -> row.

A task (segmentation, an ROI task, the slide tasks to come) implements :class:`Task`: it
says how to compute a row from a :class:`~harness.run.plan.Plan`. Everything around that
is the same for every task and lives here once: the run key, skipping a finished run,
the licence notice, writing the row, and the clean-up after it.

``pfmbench bench``, a sweep job and ``pfmbench reproduce`` all call :func:`execute`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

from harness import constants
from harness.client.regions import remove_orphan_regions
from harness.errors import ConfigError
from harness.models.weights import licence_notice
from harness.perf.engine_choice import choose_engine
from harness.results.claims import claim
from harness.results.schema import ResultRow
from harness.results.store import find_run, rows_dir, write_row
from harness.run.plan import AnyConfig, Plan, plan_run
from harness.run.task import RunContext, Task
from harness.serve.workspace import sweep_workspaces
from harness.util.atomic import remove_stale_temporaries
from harness.util.devices import resolve_device

__all__ = ["RunContext", "Task", "execute", "task_for"]


def task_for(cfg: AnyConfig) -> Task:
    """The :class:`Task` that computes rows of ``cfg``'s task."""
    task = getattr(cfg, "task", "segmentation")
    if task == "segmentation":
        from harness.run.segmentation import SegmentationTask  # imports torch: only when a segmentation run starts

        return SegmentationTask()
    if task in ("roi-linear", "roi-knn"):
        from harness.run.roi import RoiTask

        return RoiTask()
    if task in ("wsi-abmil", "wsi-survival"):
        from harness.run.wsi import WsiTask

        return WsiTask()
    raise ConfigError(f"unknown task '{task}'", "use segmentation, roi-linear, roi-knn, wsi-abmil or wsi-survival")


def execute(cfg: AnyConfig, ctx: RunContext | None = None, *, write: bool = True, skip_finished: bool = False, **context: object) -> ResultRow:
    """Run one configuration end to end and (by default) append its row to the results store.

    ``ctx`` (or its fields as keyword arguments: ``results_dir=...``) says where to read
    and write. With ``skip_finished`` (the CLI's default) a run whose key already has a
    row is not run again: that row is returned and ``ctx.notify`` told; without it the
    run starts over (``--rerun``, ``reproduce``). ``write=False`` computes the row and
    returns it without storing it (a sweep job: the sweep driver stores it).
    """
    ctx = replace(ctx, **context) if ctx else RunContext(**context)  # type: ignore[arg-type]
    if not skip_finished:  # a run that does not skip starts over: no resumed checkpoint either
        ctx = replace(ctx, fresh=True)
    ctx = replace(ctx, device=resolve_device(ctx.device))  # CUDA asked for where there is none: one line, before anything is written
    ctx = replace(ctx, engine=choose_engine(ctx.engine, cfg, ctx.device)[0])  # auto: compile where it measured faster, else torch
    plan = plan_run(cfg, ctx.image, ctx.device, ctx.engine)
    task = task_for(cfg)
    # a sweep job (its driver stores the row under the claim) and a server of unknown image (no run key) claim nothing
    held = claim(plan.run_key, ctx.results_dir, ctx.notify) if write and plan.run_key else nullcontext()
    with held:  # a second identical command waits here, then finds the row
        remove_leftovers(ctx)
        if skip_finished and (done := _stored(plan, ctx)) is not None:
            return done
        if notice := licence_notice(plan.spec, plan.weights):
            ctx.notify(notice)
        row = task.compute(plan, ctx)
        if write:
            write_row(row, ctx.results_dir)
    if write:
        task.after_write(plan, ctx)
    return row


def remove_leftovers(ctx: RunContext) -> None:
    """Remove what killed runs left: row and feature-cache temporaries, shared-memory regions and Triton workspaces nobody holds."""
    remove_stale_temporaries(rows_dir(ctx.results_dir))
    remove_stale_temporaries(constants.features_dir())
    remove_orphan_regions()
    sweep_workspaces()


def _stored(plan: Plan, ctx: RunContext) -> ResultRow | None:
    """The row the run key already has (the user is told it is skipped), or None."""
    done = find_run(plan.run_key, ctx.results_dir) if plan.run_key else None
    if done is not None:
        ctx.notify(f"skipped: run {plan.run_key} already has row {done.row_id} (--rerun runs it again)")
    return done
