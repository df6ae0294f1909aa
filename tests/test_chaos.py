"""Chaos: ``bench`` killed with SIGKILL at random points, ten times, then run to the end.

Kill points are drawn from the span of an uninterrupted run (learned again when a run
finishes first). Before each run, a row left by a finished run is deleted and every third
time the feature cache is cleared, so every kill interrupts real work rather than a skip.

Whatever a kill interrupts (the server's start, extraction into the feature cache,
decoder training, scoring, the row write), the rerun must end with exactly one row whose
metrics equal an uninterrupted run's, and every kill must leave no process behind: the
killed harness's Triton server, its backend stubs and anything else it started are gone
within 5 s (the bound the reliability issue sets; the server's own deadline is ~1 s).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import wait_until

from harness.results.schema import INSTANCE_METRICS
from harness.results.store import read_rows

from conftest import processes

KILLS = 10
BENCH = ("bench", "-m", "phikon", "-d", "nuclei-sample", "--weights", "random", "--runtime", "local",
         "--epochs", "2", "--input-size", "96", "--seed", "7", "--no-progress")
METRICS = ("mIoU", "mDice", "mIoU_nobg", "mDice_nobg", "pixel_accuracy", "mIoU_ci_low", "mIoU_ci_high", "per_class_iou", "best_val",
           *INSTANCE_METRICS)


def _bench(results: Path, features: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PFMBENCH_FEATURES": str(features)}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *BENCH, "--results-dir", str(results), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _started_since(before: set[int]) -> list[tuple[int, int, str]]:
    return [p for p in processes() if p[0] not in before]


def _cached_splits(features: Path) -> int:
    return sum(1 for d in features.iterdir() if (d / "meta.json").exists()) if features.exists() else 0


def _state(results: Path, features: Path) -> str:
    """What a run starting now finds: a row (it skips), all three splits' features cached, or neither."""
    if list((results / "rows").glob("*.parquet")):
        return "row"
    return "cached" if _cached_splits(features) == 3 else "fresh"


def _phase(proc: subprocess.Popen, results: Path, features: Path) -> str:
    """Where the run was when it was killed, from what it had left on disk and in shared memory."""
    state, cached = _state(results, features), _cached_splits(features)
    if state == "row":
        return "row written"
    if list(Path("/dev/shm").glob(f"pfm_{proc.pid}_*")):
        return f"extracting ({cached} splits cached)"
    return "features cached, no row yet (start-up, training or scoring)" if state == "cached" else f"starting ({cached} splits cached)"


@pytest.mark.slow
def test_ten_random_kills_then_a_rerun_give_one_row_equal_to_an_uninterrupted_run(tmp_path):
    reference_dir, chaos_dir = tmp_path / "reference", tmp_path / "chaos"
    # Two uninterrupted runs: the row to match, and how long a run takes with and without
    # its features cached (the spans the kill points are drawn from; not targets).
    span: dict[str, float] = {}
    for state, extra in (("fresh", ()), ("cached", ("--rerun",))):
        started = time.monotonic()
        ref = _bench(reference_dir, tmp_path / "reference-features", *extra)
        _, err = ref.communicate(timeout=600)
        assert ref.returncode == 0, err
        span[state] = time.monotonic() - started
    reference = read_rows(reference_dir)[0]

    rng = random.Random(17)
    features = tmp_path / "features"
    log, pids = [], []
    while sum("orphans_gone_s" in e for e in log) < KILLS and len(log) < 4 * KILLS:
        # Every kill lands on real work: a row some run finished is deleted (as a user would), so the next run
        # computes again instead of skipping, and every third time the feature cache is cleared too, so it extracts.
        for row in (chaos_dir / "rows").glob("*.parquet"):
            row.unlink()
        if len(log) % 3 == 0:
            shutil.rmtree(features, ignore_errors=True)
        before = {p[0] for p in processes()}
        state = _state(chaos_dir, features)
        started = time.monotonic()
        proc = _bench(chaos_dir, features)
        pids.append(proc.pid)
        at = rng.uniform(0.1, 0.95) * span[state]
        try:
            proc.wait(timeout=at)
            # Finished first: this machine is faster now than during the reference runs. Learn how long a run
            # from this state takes, so later kill points land inside it.
            span[state] = time.monotonic() - started
            log.append({"at_s": round(at, 1), "phase": f"finished first (exit {proc.returncode}, {state})"})
            continue
        except subprocess.TimeoutExpired:
            pass
        phase = _phase(proc, chaos_dir, features)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        killed = time.monotonic()
        try:
            wait_until(lambda b=before: not _started_since(b), 5, "")
        except AssertionError:
            raise AssertionError(f"killed at {at:.1f} s ({phase}), still running 5 s later: {_started_since(before)}") from None
        log.append({"at_s": round(at, 1), "phase": phase, "orphans_gone_s": round(time.monotonic() - killed, 2)})

    final = _bench(chaos_dir, features)
    out, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    rows = read_rows(chaos_dir)
    assert sum("orphans_gone_s" in e for e in log) == KILLS, log
    assert len(rows) == 1, (rows, log)
    for col in METRICS:
        assert rows[0][col] == reference[col], (col, log)
    assert rows[0]["run_key"] == reference["run_key"]
    assert not list((chaos_dir / "rows").glob(".*")), "a temporary row file was left behind"
    # the killed harnesses' shared-memory regions were removed by the runs after them
    assert not [p.name for p in Path("/dev/shm").iterdir() if any(p.name.startswith(f"pfm_{pid}_") for pid in pids)]
    print("chaos:", json.dumps(log))
