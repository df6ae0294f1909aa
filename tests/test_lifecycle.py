"""The run lifecycle: exactly one row per run key under concurrency, claims that die with their holder, a store that
survives a damaged row file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness.results.claims import claim
from harness.results.store import read_rows, row_files

TINY = ("-m", "phikon", "-d", "nuclei-sample", "--runtime", "inprocess", "--epochs", "1", "--input-size", "32", "--no-progress")


def _bench(results: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", *TINY, "--results-dir", str(results)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_identical_benches_started_together_write_one_row(tmp_path):
    first, second = _bench(tmp_path), _bench(tmp_path)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    (row,) = read_rows(tmp_path)
    skipped = [out for out, _ in outs if f"skipped: run {row['run_key']} already has row {row['row_id']}" in out]
    assert len(skipped) == 1, outs  # one computed the row, the other waited for the claim and found it


def test_a_claim_dies_with_its_holder(tmp_path):
    code = ("import sys, time; from harness.results.claims import claim\n"
            f"with claim('k1', __import__('pathlib').Path({str(tmp_path)!r})):\n"
            "    print('held', flush=True); sys.stdin.read()\n")  # holds the claim until killed
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    notes: list[str] = []
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with claim("k1", tmp_path, notes.append):  # taken at once: the kernel dropped the dead holder's lock
        pass
    assert not any(n.startswith("waiting") for n in notes), notes


def test_a_damaged_row_file_is_skipped_and_reported_not_fatal(tmp_path):
    bench = _bench(tmp_path)
    out, err = bench.communicate(timeout=600)
    assert bench.returncode == 0, err
    (good,) = read_rows(tmp_path)
    rows = tmp_path / "rows"
    (rows / "zero.parquet").write_bytes(b"")
    (rows / "torn.parquet").write_bytes(b"PAR1\x00\x01")
    reported: list[str] = []
    assert [p.name for p in row_files(tmp_path, lambda p, why: reported.append(p.name))] == [f"{good['row_id']}.parquet"]
    assert sorted(reported) == ["torn.parquet", "zero.parquet"]
    again = subprocess.run([sys.executable, "-m", "harness.cli", "bench", *TINY, "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "skipped: run" in again.stdout, again.stderr  # the skip check still reads the good row
    listed = subprocess.run([sys.executable, "-m", "harness.cli", "results", "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "zero.parquet" in listed.stderr and "phikon" in listed.stdout
