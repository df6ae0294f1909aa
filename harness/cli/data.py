"""``pfmbench data``: the dataset cards, one card's contents, and validating a download against its card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from harness.cli._app import sub_app
from harness.cli._common import CardArg, DataDirOpt, ProgressOpt, out

data_app = sub_app("data", "List, inspect and prepare datasets (one dataset_cards/<name>.yaml each).")


@data_app.command("list")
def data_list() -> None:
    """List the dataset cards: the 18 segmentation datasets, GPFM's 14 ROI and 34 slide tasks, and the built-in samples."""
    from harness.data.cards import get_card, list_cards

    t = Table(title="dataset cards (files '?': no source states the count)")
    for col in ("name", "task", "title", "format", "classes", "files", "split", "size (p14/p16)", "licence"):
        t.add_column(col, justify="right" if col in ("classes", "files") else "left")
    for name in list_cards():
        c = get_card(name)
        t.add_row(c.name, c.task, c.title, c.format, str(c.num_classes), "?" if c.expected.files is None else str(c.expected.files),
                  c.split.rule, f"{c.input_size.patch14}/{c.input_size.patch16}", c.source.license.split(" (")[0])
    out.print(t)


@data_app.command("show")
def data_show(card: CardArg) -> None:
    """Print one dataset card (classes, layout, mask rule, split, what is unverified)."""
    from harness.data.cards import get_card

    c = get_card(card)
    out.print_json(json.dumps({**c.model_dump(mode="json"), "card_hash": c.card_hash()}))


@data_app.command("prepare", epilog="Example: pfmbench data prepare consep --from ~/downloads/CoNSeP")
def data_prepare(
    card: CardArg,
    source: Annotated[Optional[Path], typer.Option("--from", help="Folder the download was unpacked into (not needed for built-in samples).")] = None,
    data_dir: DataDirOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Validate a download against its card (counts, sizes, labels, readability), then write index.parquet and preview.png.

    Nothing is copied: the index points at the download. Nothing is written unless every sample passes.
    """
    from harness.data.cards import get_card
    from harness.data.prepare import prepare
    from harness.util.progress import progress_bar

    c = get_card(card)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"checking {c.name}", total=None, info="")
        report = prepare(c, source, data_dir, on_sample=lambda n, total: bar.update(task, completed=n, total=total))
    parts = ", ".join(f"{k} {v}" for k, v in report.split_sizes.items())
    out.print(f"{c.name}: {report.samples} samples at {report.root} ({c.split.rule} split: {parts})")
    if c.slides is not None:
        out.print("slides per class: " + (", ".join(f"{k} {v}" for k, v in report.class_images.items()) or "(survival card)"))
        out.print(f"wrote {report.out_dir}/index.parquet ({report.images_per_s:.0f} slides/s, peak memory {report.peak_rss_mb:.0f} MB); "
                  f"tile them with 'pfmbench slides tile {c.name}'")
        return
    if c.task == "segmentation":
        pixels = sum(report.class_pixels.values()) or 1
        out.print("class pixels: " + ", ".join(f"{k} {v / pixels:.1%}" for k, v in report.class_pixels.items()))
    else:
        out.print("images per class: " + ", ".join(f"{k} {v}" for k, v in report.class_images.items()))
    out.print(f"wrote {report.out_dir}/index.parquet and preview.png "
              f"({report.images_per_s:.0f} samples/s, peak memory {report.peak_rss_mb:.0f} MB)")
