"""The sweep driver: expand the grid, skip finished runs, run the rest on an executor, retry, record, summarise.

Guarantees:

* A job is its run key. A key that has a row is skipped; two cells with one key are one job.
* Only this driver writes rows, after an attempt returned one, and only if the key still
  has none: rows appear exactly once per run key.
* A failed attempt (non-zero exit, killed worker, dead server, timeout) is retried up to
  ``retries`` more times, then recorded as failed with its reason; the sweep goes on.
* Killing the driver loses nothing: rerun the same sweep and finished jobs are skipped,
  training jobs resume from their last checkpoint.
* Every state change is appended to ``<results>/sweeps/<sweep id>/events.jsonl``.
* The results store is checked for writability before any job starts: a read-only or
  missing target fails at once, with nothing run and existing rows untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness import constants
from harness.errors import ResultsError
from harness.results.claims import claim
from harness.results.store import find_run, rows_dir, write_row
from harness.sweep.executors import Attempt, failed_attempt
from harness.sweep.grid import Job, SweepSpec, expand


@dataclass
class JobState:
    job: Job
    status: str = "queued"  # queued (submitted, waiting for a slot) | skipped | running (its process started) | done | failed | interrupted
    attempts: int = 0
    reason: str = ""
    wall_s: float = 0.0
    row_id: str = ""
    submitted: float = 0.0  # monotonic time of the latest submit


@dataclass
class SweepResult:
    sweep_id: str
    states: list[JobState]
    wall_s: float
    events: Path
    overhead: dict[str, float] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.states)


def check_writable(results_dir: Path | None) -> None:
    """Fail now, with the fix, if rows cannot be written (instead of after hours of compute)."""
    target = rows_dir(results_dir)
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ResultsError(f"the results store {target} is not writable: {exc.strerror or exc}",
                           "pass a writable --results-dir (or set PFMBENCH_RESULTS)") from exc


class _Events:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __call__(self, state: JobState, event: str, **extra: object) -> None:
        rec = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "event": event, "run_key": state.job.run_key,
               "job": state.job.label, "attempt": state.attempts, **extra}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def run_sweep(spec: SweepSpec, executor, results_dir: Path | None = None,
              on_change: Callable[[list[JobState]], None] | None = None, poll_s: float = 0.5) -> SweepResult:
    """Run every job of ``spec`` that has no row yet on ``executor``; returns the final states."""
    started = time.perf_counter()
    results = results_dir or constants.RESULTS_DIR
    check_writable(results)
    jobs = expand(spec)
    events = _Events(results / "sweeps" / spec.sweep_id() / "events.jsonl")
    states = [JobState(j) for j in jobs]
    for s in states:
        done = find_run(s.job.run_key, results)
        if done is not None:
            s.status, s.row_id = "skipped", done.row_id
            events(s, "skipped", row_id=done.row_id)
    by_key = {s.job.run_key: s for s in states}
    todo = [s for s in states if s.status == "queued"]
    todo.sort(key=lambda s: s.job.model)  # a model's jobs together: its shared server lives once
    remaining = {m: sum(s.job.model == m for s in todo) for m in {s.job.model for s in todo}}
    notify = on_change or (lambda _states: None)
    write_s: list[float] = []
    failed_to_start: list[tuple[Job, Attempt]] = []
    try:
        for s in todo:
            _submit(executor, s, events, failed_to_start)
        _mark_started(states, executor.running(), events)
        notify(states)
        while any(s.status in ("queued", "running") for s in states):
            finished, failed_to_start[:] = failed_to_start + executor.wait(poll_s), []
            for job, attempt in finished:
                s = by_key[job.run_key]
                if s.status == "queued":  # it started and ended between two looks
                    _mark_started([s], {job.run_key}, events)
                s.wall_s += attempt.wall_s
                if attempt.ok:
                    t0 = time.perf_counter()
                    s.status, s.row_id = "done", _store(attempt, results)
                    write_s.append(time.perf_counter() - t0)
                    # driver_s: submit to row in hand (queueing + scheduling + process + job); process_s: the job's process;
                    # run_s: the run itself as the row records it. The differences are the executor's overheads.
                    events(s, "done", row_id=s.row_id, driver_s=round(time.monotonic() - s.submitted, 3), process_s=round(attempt.wall_s, 3),
                           run_s=attempt.row.wall_time_s if attempt.row else None, write_s=round(write_s[-1], 4), where=attempt.where, note=attempt.note)
                elif s.attempts <= spec.retries:
                    events(s, "retry", reason=attempt.reason, where=attempt.where)
                    s.reason = attempt.reason
                    _submit(executor, s, events, failed_to_start)
                else:
                    s.status, s.reason = "failed", attempt.reason
                    events(s, "failed", reason=attempt.reason, where=attempt.where)
                if s.status in ("done", "failed"):
                    remaining[job.model] -= 1
                    if remaining[job.model] == 0:
                        executor.model_done(job.model)
            _mark_started(states, executor.running(), events)
            notify(states)
    except KeyboardInterrupt:
        for s in states:
            if s.status in ("queued", "running"):
                events(s, "interrupted", was=s.status)
                s.status = "interrupted"
        notify(states)
        raise SweepInterrupted(SweepResult(spec.sweep_id(), states, time.perf_counter() - started, events.path, {})) from None
    finally:
        executor.close()
    overhead = {"result_write_s": sum(write_s) / len(write_s)} if write_s else {}
    return SweepResult(spec.sweep_id(), states, time.perf_counter() - started, events.path, overhead)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C: the executor has stopped every job; ``result`` holds the states, unfinished ones ``interrupted``."""

    def __init__(self, result: SweepResult) -> None:
        super().__init__()
        self.result = result


def _mark_started(states: list[JobState], running: set[str], events: _Events) -> None:
    """Queued jobs whose process the executor has started are ``running`` from now (one ``started`` event each attempt)."""
    for s in states:
        if s.status == "queued" and s.job.run_key in running:
            s.status = "running"
            events(s, "started", attempt=s.attempts)


def _submit(executor, state: JobState, events: _Events, failed: list[tuple[Job, Attempt]]) -> None:
    state.attempts += 1
    state.status = "queued"
    state.submitted = time.monotonic()
    events(state, "queued", attempt=state.attempts)
    try:
        executor.submit(state.job)
    except Exception as exc:
        failed.append((state.job, failed_attempt(exc)))


def _store(attempt: Attempt, results: Path) -> str:
    """Write the attempt's row unless its key already has one (exactly once); returns the stored row id."""
    from harness.train.launch import finish_run_dir

    row = attempt.row
    assert row is not None
    with claim(row.run_key, results):  # a bench of the same key may be writing it right now
        existing = find_run(row.run_key, results)
        if existing is not None:
            return existing.row_id
        write_row(row, results)
    finish_run_dir(row.run_key, results)
    return row.row_id
