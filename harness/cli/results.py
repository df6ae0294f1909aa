"""Reading rows back: ``results`` (a table or any DuckDB SQL) and ``reproduce`` (re-run one row and compare)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from harness.cli._app import app
from harness.cli._common import DataDirOpt, ResultsOpt, out, results_location


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, str) and v.startswith("sha256:"):
        return "sha256:" + v[7:19] + "..."
    return str(v)


@app.command()
def results(
    results_dir: ResultsOpt = None,
    sql: Annotated[Optional[str], typer.Option(help="DuckDB SQL over the view 'rows'.")] = None,
) -> None:
    """Print the result rows as a table."""
    from harness.results.store import SUMMARY_SQL, query

    rel = query(sql or SUMMARY_SQL, results_dir)
    if rel is None:
        out.print(f"no result rows in {results_location(results_dir)} yet; run 'pfmbench bench' first")
        return
    t = Table()
    for col in rel.columns:
        t.add_column(col)
    for r in rel.fetchall():
        t.add_row(*[_cell(v) for v in r])
    out.print(t)


@app.command(epilog="Example: pfmbench reproduce 3f2a9c1e07bd")
def reproduce(
    row_id: Annotated[str, typer.Argument(help="The row to re-run (see 'pfmbench results').")],
    results_dir: ResultsOpt = None,
    data_dir: DataDirOpt = None,
    write: Annotated[bool, typer.Option(help="Also append the new row to the store.")] = False,
    pull: Annotated[bool, typer.Option("--pull", help="Pull the row's image by its digest when it is not here.")] = False,
) -> None:
    """Re-run a row's configuration in the image it ran in and print the deltas; exit 2 if they differ.

    Docker rows, and --endpoint rows whose server reported its image, run in that image
    (with --pull, fetched by digest when missing).
    """
    from harness.run.reproduce import reproduce as run_reproduce

    done = run_reproduce(row_id, results_dir=results_dir, data_dir=data_dir, write=write, pull=pull, log=lambda m: out.print(f"[dim]{m}[/dim]"))
    old, new = done.old, done.new
    t = Table(title=f"reproduce {row_id}: {old['model']} on {old['dataset']} ({new.runtime}, {new.image_digest or 'no image'})")
    for col in ("metric", "stored", "now", "delta"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    for m, was, now in done.deltas():
        both = was is not None and now is not None
        t.add_row(m, _cell(was), _cell(now), f"{now - was:+.2e}" if both else "-")  # type: ignore[operator]
    out.print(t)
    out.print("[green]identical metrics[/green]" if done.identical else "[yellow]metrics differ[/yellow]")
    if not done.identical:
        raise typer.Exit(2)
