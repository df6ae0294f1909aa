"""``pfmbench models``: the zoo (one ``models/<name>/Dockerfile`` each) and one model's spec."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from harness.cli._app import sub_app
from harness.cli._common import ModelArg, out

models_app = sub_app("models", "List and inspect models (one models/<name>/Dockerfile each).", no_args_is_help=False)


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, pattern: Annotated[str, typer.Option(help="Glob filter on names.")] = "*") -> None:
    """List the models (one per models/<name>/Dockerfile), with whether each image is built and weights are cached."""
    if ctx.invoked_subcommand:
        return
    from harness.models.zoo import zoo_status

    t = Table(title="models (image: built locally?  weights: checkpoint on this machine?)")
    for col in ("name", "architecture", "builder", "params (M)", "patch", "dim", "prefix", "licence", "gated", "image", "weights"):
        t.add_column(col, justify="right" if col in ("params (M)", "patch", "dim", "prefix") else "left")
    rows, note = zoo_status(pattern)
    for r in rows:
        s = r.spec
        if s is None:
            t.add_row(f"[red]{r.name}[/red]", "[red]invalid spec[/red]", *[""] * 7, r.image, "")
            continue
        t.add_row(s.name, s.arch, s.builder, f"{s.params_m:.1f}", str(s.patch_size), str(s.embed_dim), str(s.prefix_tokens),
                  s.license, "yes" if s.gated else "no", r.image, r.weights)
    out.print(t)
    for r in rows:
        if r.spec is None:
            out.print(f"[red]{r.name}[/red]: {r.problem} (fix: pfmbench models show {r.name} says the same; models/README.md)")
    if note:
        out.print(f"[dim]{note}[/dim]")


@models_app.command("show")
def models_show(name: ModelArg) -> None:
    """Print one model's full spec (as parsed from its Dockerfile LABELs)."""
    from harness.models.spec import get_spec

    spec = get_spec(name)
    out.print_json(json.dumps({**spec.model_dump(mode="json"), "spec_hash": spec.spec_hash()}))


@models_app.command("check")
def models_check(name: ModelArg) -> None:
    """Build the model (meta device, then one tiny random-weight forward) and hold every label against it.

    Params (and the value for params-m), embed-dim, depth, patch-size (grid shapes), prefix-tokens
    and reg-tokens: a wrong label is named with the value to put there, and the exit code is 1.
    About 10 s for a ViT-B on a CPU. Run it after writing a new models/<name>/Dockerfile.
    """
    import time

    from harness.errors import SpecError
    from harness.models.check import check_model

    started = time.perf_counter()
    checks = check_model(name)
    t = Table(title=f"{name}: labels against the built model ({time.perf_counter() - started:.0f} s)")
    for col in ("label", "declared", "measured", ""):
        t.add_column(col)
    for c in checks:
        t.add_row(c.label, c.declared, c.measured, {True: "[green]ok[/green]", False: "[red]wrong[/red]", None: "[dim]not measured[/dim]"}[c.ok])
    out.print(t)
    wrong = [c for c in checks if c.ok is False]
    if wrong:
        raise SpecError(f"models/{name}/Dockerfile", "; ".join(f"{c.label} is {c.declared}, the model has {c.measured.split(' (')[0]}" for c in wrong))
    out.print(f"every measured label of {name} matches; next: make bench MODEL={name} DATASET=nuclei-sample WEIGHTS=random EPOCHS=1")
