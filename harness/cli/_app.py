"""The root ``pfmbench`` app and its sub-apps, one per noun; the command modules register on them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pfmbench",
    help="Benchmark pathology foundation models: serve token features over Triton, train decoders and heads, score, record one row per run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def sub_app(name: str, help: str, no_args_is_help: bool = True) -> typer.Typer:
    """A noun's sub-app (``pfmbench models ...``), added to the root app."""
    sub = typer.Typer(help=help, no_args_is_help=no_args_is_help)
    app.add_typer(sub, name=name)
    return sub
