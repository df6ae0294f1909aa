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
        t.add_row(s.name, s.arch, s.builder, f"{s.params_m:.1f}", str(s.patch_size), str(s.embed_dim), str(s.prefix_tokens),
                  s.license, "yes" if s.gated else "no", r.image, r.weights)
    out.print(t)
    if note:
        out.print(f"[dim]{note}[/dim]")


@models_app.command("show")
def models_show(name: ModelArg) -> None:
    """Print one model's full spec (as parsed from its Dockerfile LABELs)."""
    from harness.models.spec import get_spec

    spec = get_spec(name)
    out.print_json(json.dumps({**spec.model_dump(mode="json"), "spec_hash": spec.spec_hash()}))
