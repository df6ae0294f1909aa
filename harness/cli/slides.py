"""``pfmbench slides``: tile a slide card's slides (tissue detection, grid at the card's resolution), resumably."""

from __future__ import annotations

import typer

from harness.cli._app import sub_app
from harness.cli._common import CardArg, DataDirOpt, ProgressOpt, out

slides_app = sub_app("slides", "Whole slides of the slide cards: tile them before a wsi-abmil or wsi-survival run (which also tiles on first use).")


@slides_app.command("tile", epilog="Example: pfmbench slides tile slides-sample")
def slides_tile(card: CardArg, data_dir: DataDirOpt = None, progress: ProgressOpt = True) -> None:
    """Find tissue on each slide's thumbnail and save its tile grid (<data>/<card>/tiles/<slide>.npz).

    Slides already tiled with the card's parameters are skipped, so a killed run resumes. A bad
    slide (truncated, unknown format, no tissue, no microns per pixel) is one error line; the
    other slides go on, and the command exits 1 at the end.
    """
    from harness.data.cards import get_card
    from harness.data.loader import dataset_root
    from harness.errors import ConfigError
    from harness.slides.table import read_table
    from harness.slides.tiling import card_tiles_dir, tile_card
    from harness.util.progress import progress_bar

    c = get_card(card)
    if c.slides is None:
        raise ConfigError(f"'{c.name}' is a {c.task} card, not a slide card", "pick a slide card ('pfmbench data list': task wsi-*)")
    records = read_table(c, dataset_root(c, data_dir))
    with progress_bar(progress) as bar:
        task = bar.add_task(f"tiling {c.name}", total=len(records), info="")

        def done(slide_id: str, outcome: str) -> None:
            bar.update(task, advance=1, info=f"{slide_id}: {outcome}")
            if not progress:
                out.print(f"{slide_id}: {outcome}", highlight=False)

        report, _ = tile_card(c, data_dir, records, on_slide=done)
    for line in report.failed:
        out.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
    s = c.slides
    out.print(f"{c.name}: {report.tiled} slides tiled, {report.skipped} already tiled, {len(report.failed)} failed; "
              f"{report.tiles} new tiles of {s.tile_px} px at {s.mpp} um/px ({report.tiles_per_s:.0f} tiles/s, "
              f"peak memory {report.peak_rss_mb:.0f} MB) in {card_tiles_dir(c, data_dir)}", highlight=False)
    if report.failed:
        raise typer.Exit(1)
