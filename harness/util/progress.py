"""Progress for long work (feature extraction, training), on stderr: bars on a terminal, plain lines elsewhere.

Library functions take ``show_progress``; with ``False`` (tests, Python callers) they
print nothing. On a terminal, rich draws live bars. Off one (a log file, CI, ``nohup``),
a live bar comes out truncated or not at all, so :class:`PlainProgress` prints one
timestamped line per stage instead: when it starts, every
:data:`~harness.constants.PROGRESS_INTERVAL_S` seconds while it runs (even when no step
finished meanwhile: a long epoch still shows a line), and when it ends; each line has the
stage, done/total, the rate and the ETA.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness import constants

stderr = Console(stderr=True)


@dataclass
class _Stage:
    description: str
    total: float | None
    completed: float
    info: str
    started: float = field(default_factory=time.monotonic)
    start_completed: float = 0.0
    printed: float = 0.0  # monotonic time of its last line
    finished: bool = False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """The part of rich's ``Progress`` the harness uses (``add_task``, ``advance``, ``update``), as timestamped lines."""

    def __init__(self, out: TextIO, interval_s: float = constants.PROGRESS_INTERVAL_S) -> None:
        self.out, self.interval_s = out, interval_s
        self._stages: list[_Stage] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="progress-lines", daemon=True)

    def __enter__(self) -> PlainProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            for stage in self._stages:
                if not stage.finished:  # interrupted or left open: its last state
                    self._line(stage, "stopped" if exc[0] is not None else "")

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "", **_: Any) -> int:
        with self._lock:
            self._stages.append(_Stage(description, total, completed, info, start_completed=completed))
            self._line(self._stages[-1], "started")
            return len(self._stages) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, completed: float | None = None, advance: float | None = None, total: float | None = None,
               info: str | None = None, **_: Any) -> None:
        with self._lock:
            stage = self._stages[task]
            if total is not None:
                stage.total = total
            if completed is not None:
                stage.completed = completed
            if advance:
                stage.completed += advance
            if info is not None:
                stage.info = info
            done = stage.total is not None and stage.completed >= stage.total and not stage.finished
            if done:
                stage.finished = True
                self._line(stage, "done")
            elif time.monotonic() - stage.printed >= self.interval_s:
                self._line(stage, "")

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.interval_s, 1.0) if self.interval_s > 0 else 1.0):
            with self._lock:
                for stage in self._stages:
                    if not stage.finished and time.monotonic() - stage.printed >= self.interval_s:
                        self._line(stage, "")

    def _line(self, stage: _Stage, state: str) -> None:
        now = time.monotonic()
        elapsed = now - stage.started
        done = stage.completed
        parts = [datetime.now().strftime("%Y-%m-%d %H:%M:%S"), stage.description]
        if stage.total:
            parts.append(f"{done:g}/{stage.total:g} ({100 * done / stage.total:.0f}%)")
        else:
            parts.append(f"{done:g} done")
        rate = (done - stage.start_completed) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.3g}/s")
            if stage.total and not stage.finished:
                parts.append(f"ETA {_duration((stage.total - done) / rate)}")
        parts.append(f"elapsed {_duration(elapsed)}")
        if stage.info:
            parts.append(stage.info)
        if state:
            parts.append(state)
        print(" | ".join(parts), file=self.out, flush=True)
        stage.printed = now


@contextmanager
def progress_bar(show: bool) -> Iterator[Any]:
    """Bars on a terminal, :class:`PlainProgress` lines off one, nothing with ``show=False``."""
    if show and not stderr.is_terminal:
        import sys

        with PlainProgress(sys.stderr) as plain:
            yield plain
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=stderr, disable=not show, transient=False,
    )
    with bar:
        yield bar
