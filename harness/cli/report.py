"""``pfmbench report``: the leaderboard with CIs and ranks, figures, and the difference to published numbers, as one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from harness.cli._app import app
from harness.cli._common import ResultsOpt, out


@app.command(epilog="Example: pfmbench report --out report/ && open report/report.html")
def report(
    results_dir: ResultsOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where report.html, leaderboard.csv and the PNG figures go.")] = Path("report"),
    metric: Annotated[str, typer.Option(help="Ranking metric: mDice (the reference's headline) | mIoU | pixel_accuracy.")] = "mDice",
) -> None:
    """Leaderboard per dataset and strategy with CIs and average ranks, figures, and the difference to published numbers.

    Rows with untrained (random) weights are marked and never compared to published numbers.
    GPFM's ROI and slide rows (linear probe, kNN, ABMIL, survival) get a section of their own. With no rows yet, the
    page shows the published PFM-DenseBench leaderboard, the baseline to read a first row against.
    """
    from harness.report.html import build_report

    files = build_report(results_dir, out_dir, metric)
    board = files.board
    if not board.entries:
        out.print(f"no segmentation rows of yours in {results_dir or 'results'} yet: {files.html} shows the published leaderboard "
                  "(run pfmbench bench, then report again)")
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
