"""The sweep's live job table on stderr (rich): counts, ETA from finished jobs, running and failed jobs."""

from __future__ import annotations

import time

from rich.live import Live
from rich.table import Table

from harness.util.progress import stderr

_STYLE = {"done": "green", "skipped": "dim", "failed": "red", "running": "yellow", "queued": ""}


class LiveTable:
    """``with LiveTable(show) as live: run_sweep(..., on_change=live.update)``; prints nothing when ``show`` is False."""

    def __init__(self, show: bool, max_rows: int = 25) -> None:
        self.show, self.max_rows = show, max_rows
        self.started = time.monotonic()
        self.live = Live(console=stderr, refresh_per_second=2, transient=False) if show else None

    def __enter__(self) -> LiveTable:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, states: list) -> None:
        if self.live:
            self.live.update(self.render(states))

    def render(self, states: list) -> Table:
        counts = {k: sum(s.status == k for s in states) for k in _STYLE}
        finished = [s for s in states if s.status in ("done", "failed")]
        left = counts["running"] + counts["queued"]
        elapsed = time.monotonic() - self.started
        eta = f"ETA {elapsed / len(finished) * left:.0f} s" if finished and left else ""
        t = Table(title=" ".join(f"{k} {v}" for k, v in counts.items() if v) + f"  elapsed {elapsed:.0f} s  {eta}")
        for col in ("job", "status", "attempts", "wall s", "note"):
            t.add_column(col, justify="right" if col in ("attempts", "wall s") else "left")
        shown = sorted(states, key=lambda s: ("running", "failed", "queued", "done", "skipped").index(s.status))[: self.max_rows]
        for s in shown:
            t.add_row(s.job.label, f"[{_STYLE[s.status]}]{s.status}[/]" if _STYLE[s.status] else s.status, str(s.attempts),
                      f"{s.wall_s:.1f}", (s.reason or s.row_id)[:60])
        return t
