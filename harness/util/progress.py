"""Progress bars for long work (feature extraction, training), on stderr, via rich.

Library functions take ``show_progress``; with ``False`` (tests, Python callers) they
print nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True)


@contextmanager
def progress_bar(show: bool) -> Iterator[Progress]:
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=stderr, disable=not show, transient=False,
    )
    with bar:
        yield bar
