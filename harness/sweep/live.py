"""The sweep's live job table on stderr (rich): counts, ETA from finished jobs, running and failed jobs.

Off a terminal (a log, CI, nohup) a live table cannot redraw: each job's change of status
is one timestamped line instead, with the counts and the ETA.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

from rich.live import Live
from rich.table import Table

from harness.util.progress import stderr

_STYLE = {"done": "green", "skipped": "dim", "failed": "red", "running": "yellow", "queued": "", "interrupted": "magenta"}


class LiveTable:
    """``with LiveTable(show) as live: run_sweep(..., on_change=live.update)``; prints nothing when ``show`` is False."""

    def __init__(self, show: bool, max_rows: int = 25) -> None:
        self.show, self.max_rows = show, max_rows
        self.started = time.monotonic()
        self.plain = show and not stderr.is_terminal
        self.live = Live(console=stderr, refresh_per_second=2, transient=False) if show and not self.plain else None
        self._seen: dict[str, str] = {}  # run key -> the status last printed (plain lines)

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
        elif self.plain:
            self._lines(states)

    def _summary(self, states: list) -> str:
        counts = {k: sum(s.status == k for s in states) for k in _STYLE}
        finished = [s for s in states if s.status in ("done", "failed")]
        left = counts["running"] + counts["queued"]
        elapsed = time.monotonic() - self.started
        eta = f"  ETA {elapsed / len(finished) * left:.0f} s" if finished and left else ""
        return " ".join(f"{k} {v}" for k, v in counts.items() if v) + f"  elapsed {elapsed:.0f} s{eta}"

    def _lines(self, states: list) -> None:
        changed = [s for s in states if self._seen.get(s.job.run_key) != s.status]
        for s in changed:
            self._seen[s.job.run_key] = s.status
            note = f" ({s.reason[:80]})" if s.status in ("failed", "interrupted") and s.reason else ""
            print(f"{datetime.now():%Y-%m-%d %H:%M:%S} | sweep | {s.job.label} {s.status}{note} | {self._summary(states)}", file=sys.stderr, flush=True)

    def render(self, states: list) -> Table:
        t = Table(title=self._summary(states))
        for col in ("job", "status", "attempts", "wall s", "note"):
            t.add_column(col, justify="right" if col in ("attempts", "wall s") else "left")
        shown = sorted(states, key=lambda s: ("running", "failed", "interrupted", "queued", "done", "skipped").index(s.status))[: self.max_rows]
        for s in shown:
            t.add_row(s.job.label, f"[{_STYLE[s.status]}]{s.status}[/]" if _STYLE[s.status] else s.status, str(s.attempts),
                      f"{s.wall_s:.1f}", (s.reason or s.row_id)[:60])
        return t
