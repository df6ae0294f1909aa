"""``pfmbench distill``: GPFM's expert + self distillation from served teachers, and export into the zoo (docs/gpfm.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from harness.cli._app import sub_app
from harness.cli._common import DataDirOpt, ProgressOpt, RuntimeOpt, SeedOpt, _card_names, out, split_list, value

distill_app = sub_app("distill", "GPFM's expert + self distillation from served teachers, and export of the student into the zoo (docs/gpfm.md).")

EXAMPLES = ("Examples:\n\n  pfmbench distill run --out runs/tiny   (tiny student, phikon + uni served, 300 steps)\n\n"
            "  pfmbench distill run --out runs/tiny --teacher-cache   (fixed global views: teacher features computed once)\n\n"
            "  pfmbench distill run --preset gpfm --weights hub --dataset <card> --out runs/gpfm   (the GPFM recipe; a GPU job)")


@distill_app.command("run", epilog=EXAMPLES)
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
    progress: ProgressOpt = True,
) -> None:
    """Distil served teachers into a student ViT: expert distillation (one head per teacher, CLS cosine and
    patch cosine + SmoothL1) plus DINO, iBOT and KoLeo self-distillation with an EMA teacher and multi-crop.

    Teacher requests for the next step run while the student trains on this one. Killed? Run the same command again.
    """
    from harness.distill.config import resolve_distill_config
    from harness.distill.trainer import distill
    from harness.runtime import choose_runtime

    chosen, why = choose_runtime(str(value(runtime)))
    cfg = resolve_distill_config(preset, tuple(split_list(teachers)) or None, teacher_weights=weights, dataset=dataset, steps=steps,
                                 batch_size=batch_size, max_images=max_images, seed=seed, checkpoint_every=checkpoint_every,
                                 teacher_cache=teacher_cache, runtime=chosen)
    out.print(f"[dim]distil {', '.join(cfg.teachers)} into a {cfg.embed_dim}d x {cfg.depth} student on {cfg.dataset}, {cfg.steps} steps "
              f"of {cfg.batch_size} images; teachers {chosen} ({why})[/dim]")
    result = distill(cfg, out_dir, data_dir=data_dir, show_progress=progress)
    if result.resumed_from:
        out.print(f"resumed from the checkpoint at step {result.resumed_from}")
    if cfg.teacher_cache:
        out.print(f"teacher features of the fixed views: {result.teacher_features}")
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
